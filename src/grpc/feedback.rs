//! `modelgate.Modelgate/Feedback`: the gRPC form of `POST /v2/models/{m}/feedback`'s batch,
//! through the same `Feedback::judge` and the same in-flight budget.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::feedback::Truth;
use crate::gateway::Gateway;
use crate::proto::modelgate::modelgate_server::Modelgate;
use crate::proto::modelgate::{FeedbackRequest, FeedbackResponse, FeedbackResult, truth};

/// Most truths one call may carry (as the HTTP batch form).
pub const MAX_BATCH: usize = 10_000;

/// `modelgate.Modelgate`.
#[derive(Debug, Clone)]
pub struct ModelgateService {
    /// The shared state.
    pub gateway: Arc<Gateway>,
}

#[tonic::async_trait]
impl Modelgate for ModelgateService {
    async fn feedback(&self, request: Request<FeedbackRequest>) -> Result<Response<FeedbackResponse>, Status> {
        let message = request.into_inner();
        let _held = self.gateway.inflight.reserve(message.encoded_len())?;
        let feedback = self.gateway.feedback(&message.model_name)?;
        if message.truths.len() > MAX_BATCH {
            feedback.count_invalid();
            return Err(Error::PayloadTooLarge(format!(
                "a feedback call holds at most {MAX_BATCH} truths, got {}",
                message.truths.len()
            ))
            .into());
        }
        let (ids, parsed): (Vec<String>, Vec<_>) = message
            .truths
            .into_iter()
            .map(|item| {
                let truth = match item.truth {
                    Some(truth::Truth::Label(label)) => Ok(Truth::Label(label)),
                    Some(truth::Truth::Value(value)) => Ok(Truth::Value(value)),
                    Some(truth::Truth::Reward(reward)) => Ok(Truth::Reward(reward)),
                    None => {
                        feedback.count_invalid();
                        Err(Error::invalid("a truth needs one of label, value, reward"))
                    }
                };
                (item.id.clone(), truth.map(|truth| (item.id, truth)))
            })
            .unzip();
        let judged = feedback.judge_parsed(parsed, &self.gateway.fleet).await;
        let mut accepted = 0;
        let results = ids
            .into_iter()
            .zip(judged)
            .map(|(id, result)| match result {
                Ok(judged) => {
                    accepted += 1;
                    FeedbackResult {
                        id,
                        code: tonic::Code::Ok as i32,
                        http_status: 200,
                        message: String::new(),
                        model_version: judged.model_version,
                        correct: judged.correct,
                    }
                }
                Err(e) => FeedbackResult {
                    id,
                    code: e.grpc_code() as i32,
                    http_status: u32::from(e.http_status().as_u16()),
                    message: e.message().to_owned(),
                    model_version: String::new(),
                    correct: None,
                },
            })
            .collect();
        Ok(Response::new(FeedbackResponse { accepted, results }))
    }
}
