//! The gRPC front door through a real socket: `inference.GRPCInferenceService`
//! as tritonclient calls it, the health service, and the errors clients see.

#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{TempRepo, TestServer, config_for};
use modelgate::proto::health::HealthCheckRequest;
use modelgate::proto::health::health_client::HealthClient;
use modelgate::proto::inference as pb;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tonic::Code;

fn simple_raw(a: &[i32], b: &[i32]) -> pb::ModelInferRequest {
    let input = |name: &str| InferInputTensor {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![1, 16],
        parameters: HashMap::new(),
        contents: None,
    };
    pb::ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![input("INPUT0"), input("INPUT1")],
        raw_input_contents: vec![
            Bytes::copy_from_slice(bytemuck::cast_slice(a)),
            Bytes::copy_from_slice(bytemuck::cast_slice(b)),
        ],
        ..Default::default()
    }
}

fn ints(raw: &Bytes) -> Vec<i32> {
    bytemuck::pod_collect_to_vec(raw)
}

#[tokio::test]
async fn metadata_calls_answer_like_triton() {
    let server = TestServer::examples().await;
    let mut client = server.grpc().await;
    assert!(client.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(client.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let meta = client.server_metadata(pb::ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(meta.name, "modelgate");
    assert!(meta.extensions.contains(&"statistics".to_owned()));

    let ready = |name: &str, version: &str| pb::ModelReadyRequest { name: name.into(), version: version.into() };
    assert!(client.model_ready(ready("mlp", "")).await.unwrap().into_inner().ready);
    assert!(client.model_ready(ready("mlp", "1")).await.unwrap().into_inner().ready);
    assert!(!client.model_ready(ready("mlp", "9")).await.unwrap().into_inner().ready);
    assert!(!client.model_ready(ready("nope", "")).await.unwrap().into_inner().ready);

    let model = client
        .model_metadata(pb::ModelMetadataRequest { name: "mlp".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.versions, vec!["1"]);
    assert_eq!(model.platform, "onnxruntime_onnx");
    assert_eq!(model.inputs[0].shape, vec![-1, 64]);
    assert_eq!(model.outputs[0].datatype, "FP32");
    let missing = client.model_metadata(pb::ModelMetadataRequest { name: "nope".into(), version: String::new() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);

    let config = client
        .model_config(pb::ModelConfigRequest { name: "simple".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 8);
    assert_eq!(config.input[0].name, "INPUT0");
    assert_eq!(config.input[0].data_type, pb::DataType::TypeInt32 as i32);
    assert!(matches!(config.scheduling_choice, Some(pb::model_config::SchedulingChoice::DynamicBatching(_))));
    assert!(!config.model_transaction_policy.unwrap().decoupled);

    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap(),
    );
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status.status, 1, "SERVING");
    let unknown = health.check(HealthCheckRequest { service: "other.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn raw_and_typed_contents_both_infer() {
    let server = TestServer::examples().await;
    let mut client = server.grpc().await;
    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = (0..16).map(|i| i * 10).collect();
    let mut request = simple_raw(&a, &b);
    request.id = "r1".into();
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(response.model_name, "simple");
    assert_eq!(response.model_version, "1");
    assert_eq!(response.id, "r1");
    assert_eq!(response.outputs[0].name, "OUTPUT0");
    assert_eq!(response.outputs[0].shape, vec![1, 16]);
    assert_eq!(ints(&response.raw_output_contents[0]), (0..16).map(|i| i * 11).collect::<Vec<_>>());
    assert_eq!(ints(&response.raw_output_contents[1]), (0..16).map(|i| -i * 9).collect::<Vec<_>>());

    let typed = |name: &str, values: &[i32]| InferInputTensor {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![1, 16],
        parameters: HashMap::new(),
        contents: Some(pb::InferTensorContents { int_contents: values.to_vec(), ..Default::default() }),
    };
    let request = pb::ModelInferRequest {
        model_name: "simple".into(),
        model_version: "1".into(),
        inputs: vec![typed("INPUT0", &a), typed("INPUT1", &b)],
        outputs: vec![InferRequestedOutputTensor { name: "OUTPUT1".into(), parameters: HashMap::new() }],
        ..Default::default()
    };
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "OUTPUT1");
    assert_eq!(ints(&response.raw_output_contents[0]), (0..16).map(|i| -i * 9).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_requests_get_the_status_code_triton_uses() {
    let server = TestServer::examples_with_model_control().await;
    let mut client = server.grpc().await;
    let good = simple_raw(&[1; 16], &[2; 16]);
    let expect = |result: Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>, code: Code, needle: &str| {
        let status = result.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(needle), "{:?} does not mention {needle:?}", status.message());
    };
    let mut r = good.clone();
    r.model_name = "nope".into();
    expect(client.model_infer(r).await, Code::NotFound, "unknown model 'nope'");
    let mut r = good.clone();
    r.model_version = "5".into();
    expect(client.model_infer(r).await, Code::NotFound, "unknown version 5");
    let mut r = good.clone();
    r.raw_input_contents.pop();
    expect(client.model_infer(r).await, Code::InvalidArgument, "1 entries for 2 inputs");
    let mut r = good.clone();
    r.raw_input_contents[0] = Bytes::from_static(&[0; 12]);
    expect(client.model_infer(r).await, Code::InvalidArgument, "needs 64 bytes, got 12");
    let mut r = good.clone();
    r.inputs[0].datatype = "FP32".into();
    expect(client.model_infer(r).await, Code::InvalidArgument, "datatype is FP32, but the model expects INT32");
    let mut r = good.clone();
    r.inputs[1].name = "INPUT0".into();
    expect(client.model_infer(r).await, Code::InvalidArgument, "more than once");
    let mut r = good.clone();
    r.inputs[0].shape = vec![1, -16];
    expect(client.model_infer(r).await, Code::InvalidArgument, "negative dimension");
    let mut r = good.clone();
    r.outputs = vec![InferRequestedOutputTensor { name: "X".into(), parameters: HashMap::new() }];
    expect(client.model_infer(r).await, Code::InvalidArgument, "unexpected output 'X'");
    let mut r = good.clone();
    r.inputs[0].contents = Some(pb::InferTensorContents { int_contents: vec![1; 16], ..Default::default() });
    expect(client.model_infer(r).await, Code::InvalidArgument, "both in contents and in raw");
    let mut r = good.clone();
    r.model_name = "../x".into();
    expect(client.model_infer(r).await, Code::InvalidArgument, "invalid model name");

    // Unloaded: UNAVAILABLE; after reloading, it serves again.
    client
        .repository_model_unload(pb::RepositoryModelUnloadRequest { model_name: "simple".into(), ..Default::default() })
        .await
        .unwrap();
    expect(client.model_infer(good.clone()).await, Code::Unavailable, "unloaded");
    client
        .repository_model_load(pb::RepositoryModelLoadRequest { model_name: "simple".into(), ..Default::default() })
        .await
        .unwrap();
    let response = client.model_infer(good).await.expect("served again after the reload").into_inner();
    assert_eq!(ints(&response.raw_output_contents[0]), vec![3; 16], "1 + 2 after the reload");
    assert_eq!(ints(&response.raw_output_contents[1]), vec![-1; 16], "1 - 2 after the reload");
}

#[tokio::test]
async fn messages_over_the_size_limit_or_the_shared_inflight_budget_are_resource_exhausted() {
    let repo = TempRepo::new();
    repo.add("identity", "identity", 1, Some("max_batch_size: 0"));
    let mut config = config_for(repo.path());
    config.server.max_request_bytes = 8 << 20;
    // An inference holds three times its tensors while it runs (budget::RUN_FACTOR).
    config.server.max_inflight_bytes = 19 << 20;
    let server = TestServer::start(config).await;
    let mut client = server.grpc().await;
    let request = |elements: usize| {
        let mut inputs = Vec::new();
        let mut raw = Vec::new();
        for &(name, dtype, size) in common::IDENTITY_FIXED_INPUTS {
            let n = if name == "IN_FP32" { elements } else { 1 };
            inputs.push(InferInputTensor {
                name: name.into(),
                datatype: dtype.into(),
                shape: vec![1, n as i64],
                parameters: HashMap::new(),
                contents: None,
            });
            raw.push(Bytes::from(vec![0u8; n * size]));
        }
        inputs.push(InferInputTensor {
            name: "IN_BYTES".into(),
            datatype: "BYTES".into(),
            shape: vec![1, 1],
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(Bytes::from_static(&[1, 0, 0, 0, b'x']));
        pb::ModelInferRequest { model_name: "identity".into(), inputs, raw_input_contents: raw, ..Default::default() }
    };
    // 6 MiB: over tonic's 4 MiB default, under the configured 8 MiB.
    let response = client.model_infer(request(6 << 18)).await.unwrap().into_inner();
    let fp32 = response.outputs.iter().position(|o| o.name == "OUT_FP32").unwrap();
    assert_eq!(response.raw_output_contents[fp32].len(), 6 << 20);
    let status = client.model_infer(request(3 << 20)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The in-flight budget (19 MiB) is shared with HTTP: an upload that
    // declares 8 MiB leaves no room for a 4 MiB message (12 MiB while it
    // runs) until it goes away.
    let upload = server.stalled_upload("/v2/models/identity/infer", 8 << 20, "{").await;
    let budget = &server.gateway.inflight;
    common::eventually("the upload holds its declared bytes", || budget.held() == 8 << 20).await;
    let status = client.model_infer(request(1 << 20)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry later"), "{status:?}");
    drop(upload);
    common::eventually("the upload gives its bytes back", || budget.held() == 0).await;
    client.model_infer(request(1 << 20)).await.unwrap();
}

#[tokio::test]
async fn streaming_infer_answers_every_request_and_reports_errors_in_band() {
    let server = TestServer::examples().await;
    let mut client = server.grpc().await;
    let mut requests = Vec::new();
    for i in 0..20 {
        let mut r = simple_raw(&[i; 16], &[1; 16]);
        r.id = format!("s{i}");
        if i == 7 {
            r.inputs[0].datatype = "FP32".into();
        }
        requests.push(r);
    }
    let mut stream = client.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut seen = HashMap::new();
    while let Some(message) = stream.message().await.unwrap() {
        let response = message.infer_response.unwrap();
        seen.insert(response.id.clone(), (message.error_message, response));
    }
    assert_eq!(seen.len(), 20, "one response per request");
    for i in 0..20 {
        let (error, response) = &seen[&format!("s{i}")];
        if i == 7 {
            assert!(error.contains("datatype is FP32"), "{error}");
        } else {
            assert!(error.is_empty(), "{error}");
            assert_eq!(ints(&response.raw_output_contents[0]), vec![i + 1; 16]);
        }
    }
}

#[tokio::test]
async fn a_stream_cancelled_mid_flight_leaves_nothing_behind() {
    let server = TestServer::examples().await;
    let mut client = server.grpc().await;
    for round in 0..20 {
        // 200 requests; the client goes away after `round` answers.
        let requests =
            tokio_stream::StreamExt::map(tokio_stream::iter(0..200), |i: i32| simple_raw(&[i; 16], &[1; 16]));
        let mut stream = client.model_stream_infer(requests).await.unwrap().into_inner();
        for _ in 0..round {
            stream.message().await.unwrap().unwrap();
        }
        drop(stream);
    }
    common::eventually("cancelled streams give back what they held", || server.gateway.inflight.held() == 0).await;
    // The server and the connection both serve as before.
    let reply = client.model_infer(simple_raw(&[2; 16], &[3; 16])).await.unwrap().into_inner();
    assert_eq!(ints(&reply.raw_output_contents[0]), vec![5; 16]);
    let mut fresh = server.grpc().await;
    assert!(fresh.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
}

#[tokio::test]
async fn statistics_and_repository_calls_work_over_grpc() {
    let server = TestServer::examples_with_model_control().await;
    let mut client = server.grpc().await;
    for _ in 0..3 {
        client.model_infer(simple_raw(&[1; 16], &[1; 16])).await.unwrap();
    }
    let stats = client
        .model_statistics(pb::ModelStatisticsRequest { name: "simple".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    let s = &stats.model_stats[0];
    assert_eq!(s.inference_count, 3);
    assert_eq!(s.execution_count, 3);
    assert_eq!(s.inference_stats.as_ref().unwrap().success.as_ref().unwrap().count, 3);
    assert_eq!(s.batch_stats[0].batch_size, 1);
    let all = client.model_statistics(pb::ModelStatisticsRequest::default()).await.unwrap().into_inner();
    assert!(all.model_stats.len() >= 3);

    let index = client
        .repository_index(pb::RepositoryIndexRequest { ready: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = index.models.iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"mlp") && names.contains(&"simple"), "{names:?}");
    assert!(index.models.iter().all(|m| m.state == "READY"));

    let mut parameters = HashMap::new();
    parameters.insert(
        "file:1/model.onnx".to_owned(),
        pb::ModelRepositoryParameter {
            parameter_choice: Some(pb::model_repository_parameter::ParameterChoice::BytesParam(Bytes::from_static(
                b"x",
            ))),
        },
    );
    let refused = client
        .repository_model_load(pb::RepositoryModelLoadRequest {
            model_name: "simple".into(),
            parameters,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn grpc_deadlines_expire_queued_requests() {
    let repo = TempRepo::new();
    // The batcher would hold a lone request for 5 s.
    repo.add(
        "simple",
        "simple",
        1,
        Some("max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 5000000 }"),
    );
    let server = TestServer::start(config_for(repo.path())).await;
    // A raw HTTP/2 call: tonic's client would enforce `grpc-timeout` itself and
    // race the server; this way only the server can answer.
    let message = prost::Message::encode_to_vec(&simple_raw(&[1; 16], &[1; 16]));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let request = http::Request::post(format!("http://{}/inference.GRPCInferenceService/ModelInfer", server.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "100m")
        .body(http_body_util::Full::new(Bytes::from(frame)))
        .unwrap();
    let started = std::time::Instant::now();
    let response = client.request(request).await.unwrap();
    let headers = response.headers().clone();
    let collected = http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = headers.get("grpc-status").or_else(|| trailers.get("grpc-status")).expect("a grpc-status");
    assert_eq!(status, "4", "DEADLINE_EXCEEDED; headers {headers:?} trailers {trailers:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

/// The HTTP config JSON of one model, read field by field from the gRPC
/// message by hand (not through the server's own rendering), so a field that
/// one door shows differently from the other fails here.
fn expected_json(config: &pb::ModelConfig) -> serde_json::Value {
    use serde_json::json;
    let data_type = |t: i32| pb::DataType::try_from(t).map(|t| t.as_str_name()).unwrap_or("?");
    let kind = |k: i32| pb::model_instance_group::Kind::try_from(k).map(|k| k.as_str_name()).unwrap_or("?");
    let version_policy = match config.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref()) {
        Some(pb::model_version_policy::PolicyChoice::Latest(l)) => {
            json!({ "latest": { "num_versions": l.num_versions } })
        }
        Some(pb::model_version_policy::PolicyChoice::All(_)) => json!({ "all": {} }),
        Some(pb::model_version_policy::PolicyChoice::Specific(s)) => json!({ "specific": { "versions": s.versions } }),
        None => json!(null),
    };
    let mut expected = json!({
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "version_policy": version_policy,
        "default_model_filename": config.default_model_filename,
        "input": config.input.iter().map(|i| json!({
            "name": i.name, "data_type": data_type(i.data_type), "dims": i.dims,
        })).collect::<Vec<_>>(),
        "output": config.output.iter().map(|o| json!({
            "name": o.name, "data_type": data_type(o.data_type), "dims": o.dims,
        })).collect::<Vec<_>>(),
        "instance_group": config.instance_group.iter().map(|g| json!({
            "name": g.name, "kind": kind(g.kind), "count": g.count, "gpus": g.gpus,
        })).collect::<Vec<_>>(),
        "parameters": config.parameters.iter().map(|(k, v)| (k.clone(), json!({ "string_value": v.string_value })))
            .collect::<serde_json::Map<_, _>>(),
        "model_transaction_policy": { "decoupled": config.model_transaction_policy.as_ref().map(|p| p.decoupled) },
    });
    if let Some(pb::model_config::SchedulingChoice::DynamicBatching(b)) = &config.scheduling_choice {
        let policy = b.default_queue_policy.unwrap_or_default();
        expected["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
            "default_queue_policy": {
                "default_timeout_microseconds": policy.default_timeout_microseconds,
                "allow_timeout_override": policy.allow_timeout_override,
                "max_queue_size": policy.max_queue_size,
            },
        });
    }
    expected
}

/// `actual` holds every field of `expected`, recursively, with the same value.
fn assert_holds(actual: &serde_json::Value, expected: &serde_json::Value, path: &str) {
    match (actual, expected) {
        (serde_json::Value::Object(a), serde_json::Value::Object(e)) => {
            for (key, value) in e {
                let Some(found) = a.get(key) else { panic!("{path}.{key}: missing from the HTTP config") };
                assert_holds(found, value, &format!("{path}.{key}"));
            }
        }
        (serde_json::Value::Array(a), serde_json::Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{path}: lengths differ");
            for (i, (x, y)) in a.iter().zip(e).enumerate() {
                assert_holds(x, y, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

#[tokio::test]
async fn http_and_grpc_show_the_same_model_config_field_by_field() {
    let repo = TempRepo::new();
    for name in ["mlp", "simple", "identity"] {
        repo.add(name, name, 1, None);
    }
    repo.add(
        "mlp",
        "tuned",
        3,
        Some(
            r#"name: "tuned"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy { specific { versions: [3] } }
dynamic_batching {
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 250
  default_queue_policy { max_queue_size: 32 default_timeout_microseconds: 5000000 allow_timeout_override: true }
}
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"#,
        ),
    );
    let server = TestServer::start(config_for(repo.path())).await;
    let mut client = server.grpc().await;
    for name in ["mlp", "simple", "identity", "tuned"] {
        let request = pb::ModelConfigRequest { name: name.into(), version: String::new() };
        let config = client.model_config(request).await.unwrap().into_inner().config.unwrap();
        let http = server.get(&format!("/v2/models/{name}/config")).await.json();
        assert_holds(&http, &expected_json(&config), name);
    }
}
