//! `POST /v2/models/{m}/feedback`: the truth of earlier predictions, one or
//! many at once, joined to the route's prediction index by request id.
//!
//! One: `{"id": "...", "label": 3}` (or `"value": 1.5`, or `"reward": 1.0`),
//! answered `{"id", "model_version", "correct"}` or an error status. Many:
//! `{"feedback": [ ... ]}` (at most [`MAX_BATCH`]), answered 200 with one
//! result per item, each with its own `status`, so one bad item does not
//! refuse the others.

use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::feedback::{Feedback, FleetLink, Truth};

/// Most truths one request may carry.
pub const MAX_BATCH: usize = 10_000;

/// One batch item: the `id` it named (for its result), and the item parsed or refused.
pub type Item = (Value, Result<(String, Truth), Error>);

/// A feedback body, read: one item, or a batch (each item parsed or refused).
#[derive(Debug)]
pub enum Parsed {
    /// `{"id": ..., "label": ...}`.
    One(String, Truth),
    /// `{"feedback": [...]}`: each item with the `id` it named (for its result).
    Many(Vec<Item>),
}

/// Reads a feedback body for `feedback`'s route. Every refusal here is counted
/// in `modelgate_feedback_total` as `invalid` (the others in [`Feedback::judge_all`]).
pub fn parse(feedback: &Feedback, body: &[u8]) -> Result<Parsed, Error> {
    let invalid = |e: Error| {
        feedback.count_invalid();
        e
    };
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(Error::invalid(format!("malformed feedback request: {e}"))))?;
    let Value::Object(object) = value else {
        return Err(invalid(Error::invalid(
            "a feedback request is a JSON object: {\"id\": ..., \"label\": ...} or {\"feedback\": [...]}",
        )));
    };
    match object.get("feedback") {
        None => {
            let (id, truth) = parse_item(&object).map_err(invalid)?;
            Ok(Parsed::One(id, truth))
        }
        Some(Value::Array(items)) => {
            if object.len() > 1 {
                return Err(invalid(Error::invalid("a batch of feedback has only the key \"feedback\"")));
            }
            if items.len() > MAX_BATCH {
                return Err(invalid(Error::PayloadTooLarge(format!(
                    "a batch of feedback holds at most {MAX_BATCH} items, got {}",
                    items.len()
                ))));
            }
            let parsed = items
                .iter()
                .map(|item| {
                    let id = item.get("id").cloned().unwrap_or(Value::Null);
                    let result = match item {
                        Value::Object(o) => parse_item(o).map_err(invalid),
                        _ => Err(invalid(Error::invalid("each feedback item is a JSON object"))),
                    };
                    (id, result)
                })
                .collect();
            Ok(Parsed::Many(parsed))
        }
        Some(_) => Err(invalid(Error::invalid("\"feedback\" must be an array of feedback items"))),
    }
}

/// Judges what [`parse`] read: the JSON reply on success (the batch form
/// succeeds as a whole and reports each item with its own `status`).
pub async fn judge(feedback: &Feedback, link: &FleetLink, parsed: Parsed) -> Result<Value, Error> {
    match parsed {
        Parsed::One(id, truth) => {
            let judged = feedback.judge(&id, truth, link).await?;
            Ok(serde_json::to_value(judged).expect("a Judged always serializes"))
        }
        Parsed::Many(items) => {
            let (ids, parsed): (Vec<Value>, Vec<_>) = items.into_iter().unzip();
            let judged = feedback.judge_parsed(parsed, link).await;
            let mut accepted = 0usize;
            let results: Vec<Value> = ids
                .into_iter()
                .zip(judged)
                .map(|(id, result)| match result {
                    Ok(judged) => {
                        accepted += 1;
                        let mut v = serde_json::to_value(judged).expect("a Judged always serializes");
                        v["status"] = json!(200);
                        v
                    }
                    Err(e) => json!({"id": id, "status": e.http_status().as_u16(), "error": e.message()}),
                })
                .collect();
            Ok(json!({"accepted": accepted, "results": results}))
        }
    }
}

/// Reads and judges a feedback body.
#[cfg(test)]
async fn answer(feedback: &Feedback, link: &FleetLink, body: &[u8]) -> Result<Value, Error> {
    let parsed = parse(feedback, body)?;
    judge(feedback, link, parsed).await
}

/// One item: its id, and exactly one of `label`, `value`, `reward`.
fn parse_item(item: &Map<String, Value>) -> Result<(String, Truth), Error> {
    for key in item.keys() {
        if !matches!(key.as_str(), "id" | "label" | "value" | "reward") {
            return Err(Error::invalid(format!(
                "unknown feedback key {:?}: an item has \"id\" and one of \"label\", \"value\", \"reward\"",
                crate::error::Quoted(key)
            )));
        }
    }
    let id = match item.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(other) => return Err(Error::invalid(format!("feedback \"id\" must be a string, got {}", kind(other)))),
        None => return Err(Error::invalid("feedback needs the \"id\" of the inference request")),
    };
    let truths: Vec<(&str, &Value)> =
        ["label", "value", "reward"].iter().filter_map(|k| item.get(*k).map(|v| (*k, v))).collect();
    let truth = match truths.as_slice() {
        [("label", v)] => Truth::Label(v.as_u64().and_then(|l| u32::try_from(l).ok()).ok_or_else(|| {
            Error::invalid(format!("feedback \"label\" must be a class index (an integer from 0), got {v}"))
        })?),
        [(key, v)] => {
            let x = v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| Error::invalid(format!("feedback \"{key}\" must be a finite number, got {v}")))?;
            if *key == "value" { Truth::Value(x) } else { Truth::Reward(x) }
        }
        _ => return Err(Error::invalid("feedback has exactly one of \"label\", \"value\", \"reward\"")),
    };
    Ok((id, truth))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::feedback::{OutputKind, Prediction, Settings};

    fn feedback() -> Feedback {
        let settings = Settings {
            ttl: Duration::from_secs(60),
            max_entries: 1000,
            window: Duration::from_secs(60),
            output: None,
            kind: OutputKind::Auto,
            min_effect: 0.02,
            shared: false,
        };
        let feedback = Feedback::new("m", settings, &[1]);
        feedback.index().insert("a", 1, Prediction::Class { class: 2, classes: 3, score: 0.8 });
        feedback.index().insert("b", 1, Prediction::Class { class: 0, classes: 3, score: 0.8 });
        feedback
    }

    fn status(result: Result<Value, Error>) -> u16 {
        result.map_or_else(|e| e.http_status().as_u16(), |_| 200)
    }

    async fn reply(feedback: &Feedback, body: &[u8]) -> Result<Value, Error> {
        answer(feedback, &FleetLink::default(), body).await
    }

    #[tokio::test]
    async fn a_label_joins_its_prediction_once() {
        let feedback = feedback();
        let first = reply(&feedback, br#"{"id":"a","label":2}"#).await.unwrap();
        assert_eq!(first, json!({"id": "a", "model_version": "1", "correct": true}));
        assert_eq!(status(reply(&feedback, br#"{"id":"a","label":1}"#).await), 409);
        assert_eq!(status(reply(&feedback, br#"{"id":"zz","label":1}"#).await), 404);
    }

    #[tokio::test]
    async fn malformed_feedback_is_a_400_and_leaves_the_prediction_open() {
        let feedback = feedback();
        for body in [
            &b"{"[..],
            b"[]",
            br#"{"label":1}"#,
            br#"{"id":7,"label":1}"#,
            br#"{"id":"a"}"#,
            br#"{"id":"a","label":1,"reward":1}"#,
            br#"{"id":"a","label":"cat"}"#,
            br#"{"id":"a","label":-1}"#,
            br#"{"id":"a","label":1.5}"#,
            br#"{"id":"a","label":3}"#,
            br#"{"id":"a","value":1.5}"#,
            br#"{"id":"a","reward":"x"}"#,
            br#"{"id":"a","label":1,"extra":1}"#,
            br#"{"id":"","label":1}"#,
            br#"{"feedback":{}}"#,
        ] {
            assert_eq!(status(reply(&feedback, body).await), 400, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(status(reply(&feedback, br#"{"id":"a","label":0}"#).await), 200, "still open after the mistakes");
    }

    #[tokio::test]
    async fn a_batch_reports_each_item() {
        let feedback = feedback();
        let reply = reply(
            &feedback,
            br#"{"feedback":[{"id":"a","label":1},{"id":"nope","label":1},{"id":"b","reward":2}, 5]}"#,
        )
        .await
        .unwrap();
        assert_eq!(reply["accepted"], 2);
        let statuses: Vec<u64> =
            reply["results"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses, [200, 404, 200, 400]);
        assert_eq!(reply["results"][0]["correct"], false);
        let many = format!(r#"{{"feedback":[{}]}}"#, vec![r#"{"id":"a","label":1}"#; MAX_BATCH + 1].join(","));
        assert_eq!(status(answer(&feedback, &FleetLink::default(), many.as_bytes()).await), 413);
    }
}
