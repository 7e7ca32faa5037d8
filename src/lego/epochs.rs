//! What the LEGO-family trainers (LEGO, mimicking, programs, text pretraining) share besides the
//! engine: the epoch structure over a fixed training set, one update, and the divergence rule.

use crate::rng::Rng;
use crate::run::{State, StepOutcome};
use crate::train::{backward_step, Optimizer};
use anyhow::Result;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Divergence beyond non-finite numbers, for every LEGO and program trainer. Their losses (BCE,
/// cross-entropy, the bounded mimicking KL) start near their chance value with logits near 0; a
/// batch loss 100 times the first means logits in the hundreds pointing the wrong way, which
/// only an update far too large for the weights produces (`lr = 1e6` gives BCE 1e12), and such
/// a run does not recover.
pub fn loss_diverged(outcome: &StepOutcome, first: Option<f64>) -> Option<String> {
    const FACTOR: f64 = 100.0;
    let first = first?;
    (outcome.loss > FACTOR * first).then(|| {
        format!(
            "the training loss is {:.4e}, over {FACTOR} times its first value {first:.4}",
            outcome.loss
        )
    })
}

/// One update from the batch loss `loss`; none from a non-finite loss, which the engine stops
/// the run on.
pub fn update(loss: &candle_core::Tensor, opt: &mut Optimizer) -> Result<StepOutcome> {
    let lv = loss.to_scalar::<f32>()? as f64;
    if !lv.is_finite() {
        return Ok(StepOutcome::loss(lv));
    }
    let stats = backward_step(loss, opt)?;
    Ok(StepOutcome {
        loss: lv,
        grad_norm: Some(stats.grad_norm),
    })
}

/// What an [`Epochs`] schedule's state carries besides its generator.
#[derive(Serialize, Deserialize)]
struct EpochProgress {
    /// Updates done.
    done: u64,
    /// Sum of the losses of the current epoch's updates.
    epoch_loss: f64,
}

/// Epochs over a fixed training set of `n` examples, shared by the LEGO and program trainers:
/// a permutation per epoch from the run's shuffle stream, consecutive batches of it, an
/// evaluation every `eval_every` epochs and a checkpoint after every epoch. The state holds
/// the stream as it was before the current epoch's permutation, so a stop inside an epoch
/// resumes bit for bit.
pub struct Epochs {
    n: usize,
    batch_size: usize,
    pub steps_per_epoch: u64,
    eval_every: u64,
    pub total: u64,
    /// The shuffle stream after the current epoch's permutation was drawn.
    shuffle: Rng,
    /// The shuffle stream before it.
    epoch_start: Rng,
    perm: Vec<usize>,
    done: u64,
    epoch_loss: f64,
}

impl Epochs {
    pub fn new(
        n: usize,
        batch_size: usize,
        epochs: usize,
        eval_every: usize,
        shuffle: Rng,
    ) -> Self {
        let steps_per_epoch = n.div_ceil(batch_size) as u64;
        Self {
            n,
            batch_size,
            steps_per_epoch,
            eval_every: eval_every as u64,
            total: epochs as u64 * steps_per_epoch,
            epoch_start: shuffle.clone(),
            shuffle,
            perm: Vec::new(),
            done: 0,
            epoch_loss: 0.0,
        }
    }

    fn start_epoch(&mut self) {
        self.epoch_start = self.shuffle.clone();
        self.perm = (0..self.n).collect();
        self.perm.shuffle(&mut self.shuffle);
    }

    /// Indices of the examples of update `step + 1`.
    pub fn batch(&mut self, step: u64) -> &[usize] {
        let si = (step % self.steps_per_epoch) as usize;
        if si == 0 {
            self.start_epoch();
            self.epoch_loss = 0.0;
        }
        &self.perm[si * self.batch_size..((si + 1) * self.batch_size).min(self.n)]
    }

    /// Records the loss of update `step + 1`.
    pub fn record(&mut self, step: u64, loss: f64) {
        self.epoch_loss += loss;
        self.done = step + 1;
    }

    pub fn eval_due(&self, step: u64) -> bool {
        self.checkpoint_due(step) && (step / self.steps_per_epoch).is_multiple_of(self.eval_every)
    }

    pub fn checkpoint_due(&self, step: u64) -> bool {
        step > 0 && step.is_multiple_of(self.steps_per_epoch)
    }

    /// The epoch `step` ends and the mean training loss over it (the evaluation's first values).
    pub fn summary(&self, step: u64) -> [f64; 2] {
        [
            (step / self.steps_per_epoch) as f64,
            self.epoch_loss / self.steps_per_epoch as f64,
        ]
    }

    pub fn save(&self, st: &mut State) -> Result<()> {
        let mid_epoch = !self.done.is_multiple_of(self.steps_per_epoch);
        let rng = if mid_epoch {
            &self.epoch_start
        } else {
            &self.shuffle
        };
        st.put_rng("shuffle", rng);
        let (done, epoch_loss) = (self.done, self.epoch_loss);
        st.put_json("epochs", &EpochProgress { done, epoch_loss })
    }

    /// Restores what [`Epochs::save`] wrote; `updates` is the optimiser's count.
    pub fn load(&mut self, st: &State, updates: u64) -> Result<()> {
        let p: EpochProgress = st.json("epochs")?;
        anyhow::ensure!(updates == p.done, "the checkpoint's step counts disagree");
        (self.done, self.epoch_loss) = (p.done, p.epoch_loss);
        self.shuffle = st.rng("shuffle")?;
        if !p.done.is_multiple_of(self.steps_per_epoch) {
            // inside an epoch: redraw its permutation from the stored generator
            self.start_epoch();
        }
        Ok(())
    }
}
