//! Training progress on the console: a progress bar when stderr is a terminal, plain log lines
//! (every `log_every` steps) otherwise. Never stdout: that is the CLI's own output.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: u64,
}

impl Progress {
    pub fn new(start: u64, max_steps: u64, log_every: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(max_steps).with_position(start);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                    .expect("the template is valid"),
            );
            bar
        });
        Progress { bar, log_every }
    }

    pub fn step(&mut self, step: u64, loss: f64, lr: f64, tokens_per_s: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s"));
            }
            None if step % self.log_every == 0 || step == 1 => {
                tracing::info!("step {step} loss {loss:.4} lr {lr:.3e} {tokens_per_s:.0} tok/s");
            }
            None => {}
        }
    }

    /// An evaluation row: its `val_loss`, and the task's headline metric beside it when it has
    /// one (`val_ppl` for language models, `accuracy`, `val_rewards/accuracies` for DPO).
    pub fn eval(&mut self, step: u64, row: &serde_json::Value) {
        let val_loss = row["val_loss"].as_f64().unwrap_or(f64::NAN);
        let mut line = format!("step {step} val_loss {val_loss:.4}");
        for key in ["val_ppl", "accuracy", "val_rewards/accuracies"] {
            if let Some(v) = row[key].as_f64() {
                line.push_str(&format!(" {key} {v:.4}"));
            }
        }
        match &self.bar {
            Some(bar) => bar.println(line),
            None => tracing::info!("{line}"),
        }
    }

    /// Runs `f` (which may log) with the bar cleared, then redraws it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
