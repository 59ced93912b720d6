//! The quality of one version as its truths arrive: accuracy with precision
//! and recall per class (classifiers), absolute and squared errors
//! (regressors), rewards. Kept twice: since the route began (what an A/B
//! result and a release gate judge) and over a sliding window of time slots
//! (what the metrics and their alerts read).
//!
//! Fed by feedback requests, never by inference, so a mutex per version is
//! enough: it is held for a few additions.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use super::summary::Prediction;

/// Classes tracked one by one; labels and predictions past it still count
/// for accuracy, but have no precision and recall of their own.
pub const MAX_CLASSES: usize = 1024;
/// Slots a window is divided into.
const SLOTS: u32 = 10;

/// What happened, as the client reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Truth {
    /// The true class.
    Label(u32),
    /// The true value.
    Value(f64),
    /// A reward for the answer (bandit style), any finite number.
    Reward(f64),
}

/// Counts of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ClassCounts {
    true_positives: u64,
    false_positives: u64,
    false_negatives: u64,
}

/// Sums that merge by addition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Labelled predictions.
    pub labelled: u64,
    /// Labelled predictions whose class was the label.
    pub correct: u64,
    classes: Vec<ClassCounts>,
    /// Predictions with a true value.
    pub valued: u64,
    abs_error: f64,
    squared_error: f64,
    /// Predictions with a reward.
    pub rewarded: u64,
    /// Sum of rewards.
    pub reward_sum: f64,
    /// Sum of squared rewards.
    pub reward_squares: f64,
}

impl Tally {
    fn class(&mut self, class: u32) -> Option<&mut ClassCounts> {
        let class = class as usize;
        if class >= MAX_CLASSES {
            return None;
        }
        if self.classes.len() <= class {
            self.classes.resize(class + 1, ClassCounts::default());
        }
        Some(&mut self.classes[class])
    }

    /// Adds one judged prediction. The caller has checked that the truth
    /// fits the prediction (a label for a class, a value for a value).
    pub fn add(&mut self, prediction: Prediction, truth: Truth) {
        match (prediction, truth) {
            (Prediction::Class { class, .. }, Truth::Label(label)) => {
                self.labelled += 1;
                if class == label {
                    self.correct += 1;
                    if let Some(c) = self.class(class) {
                        c.true_positives += 1;
                    }
                } else {
                    if let Some(c) = self.class(class) {
                        c.false_positives += 1;
                    }
                    if let Some(c) = self.class(label) {
                        c.false_negatives += 1;
                    }
                }
            }
            (Prediction::Value(value), Truth::Value(truth)) => {
                let error = f64::from(value) - truth;
                self.valued += 1;
                self.abs_error += error.abs();
                self.squared_error += error * error;
            }
            (_, Truth::Reward(reward)) => {
                self.rewarded += 1;
                self.reward_sum += reward;
                self.reward_squares += reward * reward;
            }
            // Refused before it gets here: a value for a class, a label for a value.
            _ => {}
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.labelled += other.labelled;
        self.correct += other.correct;
        if self.classes.len() < other.classes.len() {
            self.classes.resize(other.classes.len(), ClassCounts::default());
        }
        for (mine, theirs) in self.classes.iter_mut().zip(&other.classes) {
            mine.true_positives += theirs.true_positives;
            mine.false_positives += theirs.false_positives;
            mine.false_negatives += theirs.false_negatives;
        }
        self.valued += other.valued;
        self.abs_error += other.abs_error;
        self.squared_error += other.squared_error;
        self.rewarded += other.rewarded;
        self.reward_sum += other.reward_sum;
        self.reward_squares += other.reward_squares;
    }

    /// Share of labelled predictions that were right.
    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }

    /// Sums of absolute and of squared errors of the valued predictions.
    pub fn errors(&self) -> (f64, f64) {
        (self.abs_error, self.squared_error)
    }

    /// Mean reward.
    pub fn mean_reward(&self) -> Option<f64> {
        (self.rewarded > 0).then(|| self.reward_sum / self.rewarded as f64)
    }

    /// The figures as reported.
    pub fn report(&self) -> Report {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        Report {
            samples: self.labelled + self.valued + self.rewarded,
            labelled: self.labelled,
            accuracy: self.accuracy(),
            classes: self
                .classes
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != ClassCounts::default())
                .map(|(class, c)| ClassReport {
                    class: class as u32,
                    precision: ratio(c.true_positives, c.true_positives + c.false_positives),
                    recall: ratio(c.true_positives, c.true_positives + c.false_negatives),
                    support: c.true_positives + c.false_negatives,
                })
                .collect(),
            valued: self.valued,
            mae: (self.valued > 0).then(|| self.abs_error / self.valued as f64),
            rmse: (self.valued > 0).then(|| (self.squared_error / self.valued as f64).sqrt()),
            rewarded: self.rewarded,
            mean_reward: self.mean_reward(),
        }
    }
}

/// Precision and recall of one class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassReport {
    /// The class.
    pub class: u32,
    /// Of the predictions of this class, the share that were right.
    pub precision: Option<f64>,
    /// Of the labels of this class, the share predicted.
    pub recall: Option<f64>,
    /// Labels of this class.
    pub support: u64,
}

/// The quality figures of one version.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Truths received.
    pub samples: u64,
    /// Of which labels.
    pub labelled: u64,
    /// Share of labels the predicted class matched.
    pub accuracy: Option<f64>,
    /// Per class (classes seen only).
    pub classes: Vec<ClassReport>,
    /// Of which true values.
    pub valued: u64,
    /// Mean absolute error.
    pub mae: Option<f64>,
    /// Root mean squared error.
    pub rmse: Option<f64>,
    /// Of which rewards.
    pub rewarded: u64,
    /// Mean reward.
    pub mean_reward: Option<f64>,
}

struct Book {
    total: Tally,
    /// (slot number, its tally), oldest first.
    slots: VecDeque<(u64, Tally)>,
}

/// The quality of one version.
pub struct Quality {
    book: Mutex<Book>,
    slot: Duration,
    start: Instant,
}

impl std::fmt::Debug for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quality").field("slot", &self.slot).finish()
    }
}

impl Quality {
    /// Empty, with a sliding window of `window`.
    pub fn new(window: Duration) -> Quality {
        Quality {
            book: Mutex::new(Book { total: Tally::default(), slots: VecDeque::new() }),
            slot: (window / SLOTS).max(Duration::from_millis(1)),
            start: Instant::now(),
        }
    }

    fn slot_of(&self, now: Instant) -> u64 {
        (now.duration_since(self.start).as_millis() / self.slot.as_millis()) as u64
    }

    /// Adds one judged prediction at `now`.
    pub fn record(&self, now: Instant, prediction: Prediction, truth: Truth) {
        let slot = self.slot_of(now);
        let mut book = self.book.lock();
        book.total.add(prediction, truth);
        if book.slots.back().is_none_or(|(s, _)| *s != slot) {
            book.slots.push_back((slot, Tally::default()));
        }
        while book.slots.front().is_some_and(|(s, _)| *s + u64::from(SLOTS) <= slot) {
            book.slots.pop_front();
        }
        if let Some((_, tally)) = book.slots.back_mut() {
            tally.add(prediction, truth);
        }
    }

    /// Everything since the route began.
    pub fn total(&self) -> Tally {
        self.book.lock().total.clone()
    }

    /// The sliding window that ends at `now`.
    pub fn window(&self, now: Instant) -> Tally {
        let slot = self.slot_of(now);
        let book = self.book.lock();
        let mut sum = Tally::default();
        for (_, tally) in book.slots.iter().filter(|(s, _)| *s + u64::from(SLOTS) > slot) {
            sum.merge(tally);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(class: u32) -> Prediction {
        Prediction::Class { class, classes: 3, score: 1.0 }
    }

    #[test]
    fn accuracy_precision_and_recall_per_class() {
        let mut tally = Tally::default();
        tally.add(class(0), Truth::Label(0));
        tally.add(class(0), Truth::Label(1));
        tally.add(class(1), Truth::Label(1));
        tally.add(class(2), Truth::Label(1));
        let report = tally.report();
        assert_eq!(report.accuracy, Some(0.5));
        let c0 = &report.classes[0];
        assert_eq!((c0.precision, c0.recall, c0.support), (Some(0.5), Some(1.0), 1));
        let c1 = &report.classes[1];
        assert_eq!((c1.precision, c1.recall, c1.support), (Some(1.0), Some(1.0 / 3.0), 3));
        assert_eq!(report.classes[2].precision, Some(0.0));
    }

    #[test]
    fn errors_and_rewards() {
        let mut tally = Tally::default();
        tally.add(Prediction::Value(1.0), Truth::Value(2.0));
        tally.add(Prediction::Value(1.0), Truth::Value(4.0));
        tally.add(class(1), Truth::Reward(0.5));
        tally.add(Prediction::Value(0.0), Truth::Reward(1.5));
        let report = tally.report();
        assert_eq!(report.mae, Some(2.0));
        assert_eq!(report.rmse, Some(5f64.sqrt()));
        assert_eq!((report.rewarded, report.mean_reward), (2, Some(1.0)));
        assert_eq!(report.samples, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_what_the_total_keeps() {
        let quality = Quality::new(Duration::from_secs(10));
        quality.record(Instant::now(), class(0), Truth::Label(1));
        tokio::time::advance(Duration::from_secs(5)).await;
        quality.record(Instant::now(), class(0), Truth::Label(0));
        assert_eq!(quality.window(Instant::now()).labelled, 2);
        tokio::time::advance(Duration::from_secs(6)).await;
        let window = quality.window(Instant::now());
        assert_eq!((window.labelled, window.accuracy()), (1, Some(1.0)));
        assert_eq!(quality.total().labelled, 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(quality.window(Instant::now()).labelled, 0);
    }
}
