//! Learning-rate schedules: the multiplier of the base learning rate at each step.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Multiplier 1 after warmup.
    Constant,
    /// Linear warmup to 1, then linear decay to `final_ratio` at `total_steps`.
    Linear,
    /// Linear warmup to 1, then half a cosine down to `final_ratio` at `total_steps`.
    Cosine,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Steps of linear warmup from 0 (step 0 gets `1 / warmup_steps`).
    pub warmup_steps: u64,
    /// Step at which decay ends (ignored by `constant`).
    pub total_steps: u64,
    /// Multiplier at and after `total_steps`.
    pub final_ratio: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            total_steps: 0,
            final_ratio: 0.0,
        }
    }
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        if self.kind != ScheduleKind::Constant && self.total_steps <= self.warmup_steps {
            bail!(
                "invalid schedule field `total_steps` = {}: a decaying schedule needs total_steps > warmup_steps = {}",
                self.total_steps,
                self.warmup_steps
            );
        }
        if !(0.0..=1.0).contains(&self.final_ratio) || self.final_ratio.is_nan() {
            bail!(
                "invalid schedule field `final_ratio` = {}: must be in [0, 1]",
                self.final_ratio
            );
        }
        Ok(())
    }

    /// Multiplier of the base learning rate for the update at `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let frac = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let r = self.final_ratio;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - (1.0 - r) * frac,
            ScheduleKind::Cosine => {
                r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}
