//! A version's model config as Triton's `ModelConfig` message: built once
//! from [`ModelConfig`], sent as protobuf by gRPC and as Triton's JSON by
//! HTTP (`GET /v2/models/{m}/config`), so the two doors cannot disagree.
//!
//! The JSON is the protobuf JSON mapping as Triton prints it: proto field
//! names, every scalar, list and map field printed even at its default,
//! message fields only when set, enums by name, and 64-bit integers as
//! numbers rather than the mapping's strings.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use super::model_config::{ModelConfig, VersionPolicy};
use crate::proto::inference as pb;

/// The config as the gRPC `ModelConfig` message, with the optimization
/// defaults Triton reports for a model that sets none.
pub fn message(config: &ModelConfig) -> pb::ModelConfig {
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let policy = match &config.version_policy {
        VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest { num_versions: *n }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific(v) => {
            PolicyChoice::Specific(Specific { versions: v.iter().map(|&x| x as i64).collect() })
        }
    };
    let scheduling = config.dynamic_batching.as_ref().map(|b| {
        pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
            preferred_batch_size: b.preferred_batch_size.iter().map(|&p| p as i32).collect(),
            max_queue_delay_microseconds: b.max_queue_delay_microseconds,
            preserve_ordering: b.preserve_ordering,
            default_queue_policy: Some(pb::ModelQueuePolicy {
                timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
                default_timeout_microseconds: b.default_timeout_microseconds,
                allow_timeout_override: b.allow_timeout_override,
                max_queue_size: b.max_queue_size,
            }),
            ..Default::default()
        })
    });
    let pinned = Some(pb::model_optimization_policy::PinnedMemoryBuffer { enable: true });
    pb::ModelConfig {
        name: config.name.clone(),
        platform: config.platform.clone(),
        backend: config.backend.clone(),
        version_policy: Some(pb::ModelVersionPolicy { policy_choice: Some(policy) }),
        max_batch_size: config.max_batch_size as i32,
        input: config
            .inputs
            .iter()
            .map(|s| pb::ModelInput {
                name: s.name.clone(),
                data_type: s.dtype.config_enum_value(),
                dims: s.dims.clone(),
                ..Default::default()
            })
            .collect(),
        output: config
            .outputs
            .iter()
            .map(|s| pb::ModelOutput {
                name: s.name.clone(),
                data_type: s.dtype.config_enum_value(),
                dims: s.dims.clone(),
                ..Default::default()
            })
            .collect(),
        instance_group: config
            .instance_groups
            .iter()
            .map(|g| pb::ModelInstanceGroup {
                name: g.name.clone(),
                kind: g.kind.value(),
                count: g.count as i32,
                gpus: g.gpus.iter().map(|&x| x as i32).collect(),
                ..Default::default()
            })
            .collect(),
        optimization: Some(pb::ModelOptimizationPolicy {
            input_pinned_memory: pinned,
            output_pinned_memory: pinned,
            ..Default::default()
        }),
        default_model_filename: config.default_model_filename.clone(),
        parameters: config
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), pb::ModelParameter { string_value: v.clone() }))
            .collect(),
        // perf_analyzer reads `decoupled` whenever its parent is present.
        model_transaction_policy: Some(pb::ModelTransactionPolicy { decoupled: false }),
        scheduling_choice: scheduling,
        ..Default::default()
    }
}

/// The config in Triton's JSON: [`message`], printed through its descriptor.
pub fn json(config: &ModelConfig) -> serde_json::Value {
    let bytes = message(config).encode_to_vec();
    let dynamic = DynamicMessage::decode(model_config_descriptor(), bytes.as_slice())
        .expect("a ModelConfig decodes with its own descriptor");
    let options =
        SerializeOptions::new().skip_default_fields(false).use_proto_field_name(true).stringify_64_bit_integers(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("a message always serializes to a JSON value")
}

fn model_config_descriptor() -> prost_reflect::MessageDescriptor {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("build.rs writes a valid descriptor set")
    })
    .get_message_by_name("inference.ModelConfig")
    .expect("model_config.proto defines inference.ModelConfig")
}

#[cfg(test)]
mod tests {
    use modelgate_backend::DataType;

    use super::*;
    use crate::repository::model_config::{DynamicBatching, InstanceKind, instance_groups};
    use crate::tensor::IoSpec;

    fn config() -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            platform: "onnxruntime_onnx".into(),
            backend: "onnxruntime".into(),
            version_policy: VersionPolicy::Latest(1),
            max_batch_size: 8,
            inputs: vec![IoSpec { name: "x".into(), dtype: DataType::Fp32, dims: vec![-1, 4] }],
            outputs: vec![IoSpec { name: "y".into(), dtype: DataType::Int64, dims: vec![3] }],
            dynamic_batching: Some(DynamicBatching {
                max_queue_delay_microseconds: 100,
                preferred_batch_size: vec![4],
                ..Default::default()
            }),
            instance_groups: instance_groups(
                "m",
                vec![crate::repository::model_config::InstanceGroup {
                    name: String::new(),
                    kind: InstanceKind::Gpu,
                    count: 1,
                    gpus: vec![],
                }],
            ),
            default_model_filename: "model.onnx".into(),
            parameters: Default::default(),
            warmup: vec![],
        }
    }

    #[test]
    fn a_gpu_group_without_gpus_listed_shows_device_0_in_both_forms() {
        let config = config();
        assert_eq!(message(&config).instance_group[0].gpus, [0]);
        assert_eq!(json(&config)["instance_group"][0]["gpus"], serde_json::json!([0]));
    }

    #[test]
    fn the_json_is_tritons_proto_names_enum_names_numbers_and_defaults_printed() {
        let json = json(&config());
        assert_eq!(json["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(json["input"][0]["dims"], serde_json::json!([-1, 4]), "int64 dims are numbers, not strings");
        assert_eq!(json["instance_group"][0]["kind"], "KIND_GPU");
        assert_eq!(json["dynamic_batching"]["max_queue_delay_microseconds"], 100);
        assert_eq!(json["dynamic_batching"]["default_queue_policy"]["timeout_action"], "REJECT");
        assert_eq!(json["input"][0]["is_shape_tensor"], false, "scalars print at their default");
        assert_eq!(json["batch_input"], serde_json::json!([]), "lists print when empty");
        assert_eq!(json["optimization"]["input_pinned_memory"]["enable"], true);
        assert!(json.get("sequence_batching").is_none(), "unset messages are left out");
    }
}
