//! Property tests of the gRPC request decoder: any `ModelInferRequest` becomes
//! a request whose tensors hold exactly what their shapes call for, within
//! the limit, or INVALID_ARGUMENT / RESOURCE_EXHAUSTED. Never a panic.

use std::collections::HashMap;

use bytes::Bytes;
use modelgate_backend::DataType;
use proptest::prelude::*;

use super::decode_request;
use crate::error::Error;
use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::{InferParameter, InferTensorContents, ModelInferRequest};
use crate::tensor::check_decoded;

const LIMIT: usize = 1 << 12;

fn dimension() -> impl Strategy<Value = i64> {
    prop_oneof![6 => 0i64..5, 1 => prop::sample::select(vec![-1i64, -7, 1 << 31, 1 << 40, 1 << 62, i64::MAX])]
}

fn datatype() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(DataType::ALL.to_vec()).prop_map(|d| d.v2_name().to_owned()),
        1 => "[A-Z0-9]{0,6}",
    ]
}

/// Typed contents: each field empty or holding a few values of any range.
fn contents() -> impl Strategy<Value = InferTensorContents> {
    let few = || 0usize..6;
    (
        prop::collection::vec(any::<bool>(), few()),
        prop::collection::vec(any::<i32>(), few()),
        prop::collection::vec(any::<i64>(), few()),
        prop::collection::vec(any::<u32>(), few()),
        prop::collection::vec(any::<f32>(), few()),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4).prop_map(Bytes::from), few()),
        0u8..8,
    )
        .prop_map(|(bools, ints, int64s, uints, fp32s, bytes, keep)| {
            // Mostly one field set, as clients send them; sometimes several.
            let mut c = InferTensorContents::default();
            match keep {
                0 => c.bool_contents = bools,
                1 => c.int_contents = ints,
                2 => c.int64_contents = int64s,
                3 => c.uint_contents = uints,
                4 => c.fp32_contents = fp32s,
                5 => c.bytes_contents = bytes,
                6 => {}
                _ => {
                    c.int_contents = ints;
                    c.fp32_contents = fp32s;
                }
            }
            c
        })
}

fn input() -> impl Strategy<Value = InferInputTensor> {
    (
        prop::sample::select(vec!["a", "b", "a"]),
        datatype(),
        prop::collection::vec(dimension(), 0..4),
        prop::option::of(contents()),
        prop::option::of(prop::sample::select(vec!["sequence_id", "binary_data_size", "x"])),
    )
        .prop_map(|(name, datatype, shape, contents, parameter)| InferInputTensor {
            name: name.into(),
            datatype,
            shape,
            parameters: parameter
                .map(|key| (key.to_owned(), InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(1)) }))
                .into_iter()
                .collect(),
            contents,
        })
}

fn request() -> impl Strategy<Value = ModelInferRequest> {
    (
        prop::collection::vec(input(), 0..4),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from), 0..5),
        prop::option::of(prop_oneof![
            any::<i64>().prop_map(ParameterChoice::Int64Param),
            any::<u64>().prop_map(ParameterChoice::Uint64Param),
            any::<bool>().prop_map(ParameterChoice::BoolParam),
        ]),
    )
        .prop_map(|(inputs, raw, timeout)| {
            let mut parameters = HashMap::new();
            if let Some(choice) = timeout {
                parameters.insert("timeout".to_owned(), InferParameter { parameter_choice: Some(choice) });
            }
            ModelInferRequest {
                model_name: "m".into(),
                inputs,
                raw_input_contents: raw,
                parameters,
                ..ModelInferRequest::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_infer_message_decodes_exactly_or_is_refused(message in request()) {
        match decode_request(message, LIMIT) {
            Ok(request) => check_decoded(&request, LIMIT).map_err(TestCaseError::fail)?,
            Err(error) => {
                let error = Error::from(error);
                let code = error.grpc_code();
                prop_assert!(
                    matches!(code, tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted),
                    "{code:?}: {error}"
                );
            }
        }
    }

    #[test]
    fn raw_contents_of_the_right_size_are_taken_as_they_are(
        dtype in prop::sample::select(DataType::ALL.iter().copied().filter(|d| d.element_size().is_some()).collect::<Vec<_>>()),
        shape in prop::collection::vec(0i64..4, 1..4),
        fill in 0u8..2,
    ) {
        let count = shape.iter().product::<i64>() as usize;
        let raw = Bytes::from(vec![fill; count * dtype.element_size().unwrap_or(1)]);
        let message = ModelInferRequest {
            inputs: vec![InferInputTensor { name: "x".into(), datatype: dtype.v2_name().into(), shape: shape.clone(), ..Default::default() }],
            raw_input_contents: vec![raw.clone()],
            ..ModelInferRequest::default()
        };
        let request = decode_request(message, LIMIT).map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
        prop_assert_eq!(&request.inputs[0].shape, &shape);
        prop_assert_eq!(&request.inputs[0].data, &raw);
    }
}
