//! Progress display: Burn's terminal UI when stdout is a terminal, otherwise a few plain lines
//! (Burn's fallback prints a debug dump per batch, thousands of lines in a log file).

use std::io::IsTerminal;
use std::time::Instant;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::MetricDefinition;
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// One line per finished split, with its duration.
pub struct LineRenderer {
    epoch: usize,
    epochs: usize,
    split: String,
    items: usize,
    started: Instant,
}

impl LineRenderer {
    /// A renderer that prints nothing until the first split starts.
    pub fn new() -> Self {
        Self {
            epoch: 1,
            epochs: 0,
            split: String::new(),
            items: 0,
            started: Instant::now(),
        }
    }

    /// Burn's TUI on a terminal, this renderer otherwise.
    pub fn for_stdout() -> Option<Box<dyn MetricsRenderer>> {
        (!std::io::stdout().is_terminal())
            .then(|| Box::new(Self::new()) as Box<dyn MetricsRenderer>)
    }
}

impl Default for LineRenderer {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
}

impl MetricsRendererEvaluation for LineRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl TrainingProgressLogger for LineRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epochs = total_epochs;
        self.epoch = starting_epoch.max(1);
    }

    fn start_split(&mut self, split_name: &str, total_items: usize) {
        self.split = split_name.to_string();
        self.items = total_items;
        self.started = Instant::now();
    }

    fn update_split(&mut self, _items_processed: usize) {}

    fn update_epoch(&mut self, epoch: usize) {
        self.epoch = epoch + 1;
    }

    fn end_split(&mut self) {
        println!(
            "epoch {}/{}: {} on {} digits in {:.1} s",
            self.epoch.min(self.epochs.max(1)),
            self.epochs,
            self.split,
            self.items,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for LineRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}
