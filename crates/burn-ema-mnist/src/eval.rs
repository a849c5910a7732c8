//! Accuracy, loss and confusion matrix of a model on a set of digits.

use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::prelude::*;

use crate::data::{MnistBatcher, MnistItem};
use crate::model::Cnn;

/// How well a model does on a set of digits.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// `confusion[truth][prediction]` counts.
    pub confusion: [[u32; 10]; 10],
}

impl Evaluation {
    /// The confusion matrix as aligned text.
    pub fn confusion_table(&self) -> String {
        let mut out = String::from("truth\\pred");
        for p in 0..10 {
            out += &format!("{p:>6}");
        }
        out.push('\n');
        for (t, row) in self.confusion.iter().enumerate() {
            out += &format!("{t:>10}");
            for count in row {
                out += &format!("{count:>6}");
            }
            out.push('\n');
        }
        out
    }
}

/// Evaluates `model` (in evaluation mode: BatchNorm uses its running statistics) on `items`.
pub fn evaluate(model: &Cnn, items: &[MnistItem], device: &Device) -> Evaluation {
    let model = model.valid();
    let device = device.clone().inner();
    let mut confusion = [[0u32; 10]; 10];
    let (mut loss_sum, mut count) = (0.0f64, 0usize);
    for chunk in items.chunks(500) {
        let batch = MnistBatcher.batch(chunk.to_vec(), &device);
        let out = model.forward_classification(batch);
        let loss = out
            .loss
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 loss")[0] as f64;
        loss_sum += loss * chunk.len() as f64;
        count += chunk.len();
        let predictions = out
            .output
            .argmax(1)
            .into_data()
            .try_into_vec_as::<i64>()
            .expect("ints");
        for (item, &p) in chunk.iter().zip(&predictions) {
            confusion[item.label as usize][p as usize] += 1;
        }
    }
    let correct: u32 = (0..10).map(|i| confusion[i][i]).sum();
    Evaluation {
        accuracy: correct as f64 / count.max(1) as f64,
        loss: loss_sum / count.max(1) as f64,
        confusion,
    }
}
