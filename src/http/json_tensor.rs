//! Tensor data in V2 JSON: parsing `"data"` straight into the tensor's bytes,
//! and writing output bytes as JSON numbers.
//!
//! The `data` member is held as borrowed raw JSON until the element type and
//! shape are known (JSON members come in any order), then walked once with a
//! visitor that writes each element into a buffer sized from the validated
//! shape. No `serde_json::Value` is ever built for tensor data: a 64 MiB body
//! of `0,` would otherwise become gigabytes of `Value`s.

use std::fmt;

use modelgate_backend::{DataType, bytes_elements, push_bytes_element};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Parses a JSON `data` value (flat or nested arrays, or a single scalar for
/// a one-element tensor) into `count` elements of `dtype`, little-endian.
pub fn parse_data(raw: &RawValue, dtype: DataType, count: usize, rank: usize) -> Result<Vec<u8>, String> {
    if matches!(dtype, DataType::Fp32 | DataType::Fp64)
        && let Some(bytes) = parse_plain_floats(raw.get().as_bytes(), dtype, count, rank.max(1))
    {
        return Ok(bytes);
    }
    parse_with_serde(raw, dtype, count, rank)
}

/// `parse_data` through serde_json's visitor: every element type, and the
/// error message for every malformed `data`. Public for `benches/json_data.rs`,
/// which measures the FP32/FP64 fast path against it.
pub fn parse_with_serde(raw: &RawValue, dtype: DataType, count: usize, rank: usize) -> Result<Vec<u8>, String> {
    let capacity = match dtype.element_size() {
        Some(size) => count * size,
        None => raw.get().len(),
    };
    let mut out = Vec::with_capacity(capacity);
    let mut remaining = count;
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let sink = Elements { dtype, out: &mut out, remaining: &mut remaining, depth: 0, max_depth: rank.max(1) };
    sink.deserialize(&mut deserializer).map_err(|e| clean(e.to_string()))?;
    if remaining != 0 {
        return Err(format!("'data' holds {} elements, the shape needs {count}", count - remaining));
    }
    Ok(out)
}

/// The fast path for FP32 and FP64 data written as JSON numbers in arrays
/// nested at most `max_depth` deep, which is what clients send. serde_json's
/// visitor costs about 300 instructions per element here (a generic number
/// parser, then a visitor call); this scanner checks JSON's number grammar
/// itself and hands each number to `fast_float2` (correctly rounded, as
/// serde_json's `float_roundtrip` is). Every value is exactly the one
/// `parse_with_serde` gives, integers and `-0` included (tested below).
///
/// `None` for anything else (strings, `null`, a number JSON does not allow or
/// one that overflows, integers of more than 15 digits, a top-level scalar,
/// nesting past the rank, a count other than `count`): the caller then
/// re-parses with serde_json, whose error the client sees.
fn parse_plain_floats(text: &[u8], dtype: DataType, count: usize, max_depth: usize) -> Option<Vec<u8>> {
    #[derive(PartialEq)]
    enum Next {
        /// After `,`: a value.
        Value,
        /// After `[`: a value or `]`.
        ValueOrClose,
        /// After a value or an inner `]`: `,` or `]`.
        CommaOrClose,
    }
    let fp32 = dtype == DataType::Fp32;
    let mut out = Vec::with_capacity(count.checked_mul(if fp32 { 4 } else { 8 })?);
    let mut elements = 0usize;
    let mut depth = 0usize;
    let mut next = Next::Value;
    let mut i = skip_whitespace(text, 0);
    if text.get(i) != Some(&b'[') {
        return None;
    }
    while i < text.len() {
        match text[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'[' if next != Next::CommaOrClose => {
                depth += 1;
                if depth > max_depth {
                    return None;
                }
                next = Next::ValueOrClose;
                i += 1;
            }
            b']' if next != Next::Value => {
                depth -= 1;
                next = Next::CommaOrClose;
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            b',' if next == Next::CommaOrClose => {
                next = Next::Value;
                i += 1;
            }
            b'-' | b'0'..=b'9' if next != Next::CommaOrClose => {
                let (value, end) = json_number(text, i)?;
                elements += 1;
                if elements > count {
                    return None;
                }
                if fp32 {
                    out.extend_from_slice(&(value as f32).to_le_bytes());
                } else {
                    out.extend_from_slice(&value.to_le_bytes());
                }
                next = Next::CommaOrClose;
                i = end;
            }
            _ => return None,
        }
    }
    let closed = depth == 0 && next == Next::CommaOrClose;
    (closed && skip_whitespace(text, i) == text.len() && elements == count).then_some(out)
}

fn skip_whitespace(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The JSON number starting at `start`, as serde_json would hand it to the
/// visitor and the visitor would widen it to f64, and the index after it.
fn json_number(text: &[u8], start: usize) -> Option<(f64, usize)> {
    let digits = |mut i: usize| {
        let from = i;
        while i < text.len() && text[i].is_ascii_digit() {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let negative = text[start] == b'-';
    let int_start = start + usize::from(negative);
    let int_end = match text.get(int_start) {
        Some(b'0') => int_start + 1,
        Some(b'1'..=b'9') => digits(int_start)?,
        _ => return None,
    };
    let mut end = int_end;
    let mut integral = true;
    if text.get(end) == Some(&b'.') {
        end = digits(end + 1)?;
        integral = false;
    }
    if matches!(text.get(end), Some(b'e' | b'E')) {
        let mut exponent = end + 1;
        if matches!(text.get(exponent), Some(b'+' | b'-')) {
            exponent += 1;
        }
        end = digits(exponent)?;
        integral = false;
    }
    if matches!(text.get(end), Some(b'0'..=b'9')) {
        return None; // a leading zero followed by digits ("01")
    }
    if integral {
        // serde_json hands integers over as u64 / i64 (and "-0" as -0.0)
        // and the visitor rounds them once to the element type; up to 15
        // digits (< 2^53) the f64 here is exact, so the one rounding to f32
        // below gives the same value.
        if int_end - int_start > 15 {
            return None;
        }
        let magnitude = text[int_start..int_end].iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        let value = match (negative, magnitude) {
            (true, 0) => -0.0,
            (true, m) => -m as f64,
            (false, m) => m as f64,
        };
        return Some((value, end));
    }
    let value: f64 = fast_float2::parse(&text[start..end]).ok()?;
    value.is_finite().then_some((value, end))
}

/// serde_json appends " at line 1 column N" of the inner document, which
/// means nothing to the client; keep the message.
fn clean(message: String) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    }
}

struct Elements<'s> {
    dtype: DataType,
    out: &'s mut Vec<u8>,
    remaining: &'s mut usize,
    depth: usize,
    max_depth: usize,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Elements<'_> {
    fn push<E: de::Error>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> Result<(), String>) -> Result<(), E> {
        if *self.remaining == 0 {
            return Err(E::custom("'data' holds more elements than the shape"));
        }
        *self.remaining -= 1;
        write(self.out).map_err(E::custom)
    }

    fn integer<E: de::Error>(&mut self, value: i128) -> Result<(), E> {
        let dtype = self.dtype;
        let range = || format!("{value} is out of range for {dtype}");
        self.push(|out| {
            match dtype {
                DataType::Int8 => out.extend_from_slice(&i8::try_from(value).map_err(|_| range())?.to_le_bytes()),
                DataType::Int16 => out.extend_from_slice(&i16::try_from(value).map_err(|_| range())?.to_le_bytes()),
                DataType::Int32 => out.extend_from_slice(&i32::try_from(value).map_err(|_| range())?.to_le_bytes()),
                DataType::Int64 => out.extend_from_slice(&i64::try_from(value).map_err(|_| range())?.to_le_bytes()),
                DataType::Uint8 => out.extend_from_slice(&u8::try_from(value).map_err(|_| range())?.to_le_bytes()),
                DataType::Uint16 => out.extend_from_slice(&u16::try_from(value).map_err(|_| range())?.to_le_bytes()),
                DataType::Uint32 => out.extend_from_slice(&u32::try_from(value).map_err(|_| range())?.to_le_bytes()),
                DataType::Uint64 => out.extend_from_slice(&u64::try_from(value).map_err(|_| range())?.to_le_bytes()),
                DataType::Fp32 => out.extend_from_slice(&(value as f32).to_le_bytes()),
                DataType::Fp64 => out.extend_from_slice(&(value as f64).to_le_bytes()),
                other => {
                    return Err(format!("expected {} data, found the number {value}", describe(other)));
                }
            }
            Ok(())
        })
    }
}

fn describe(dtype: DataType) -> &'static str {
    match dtype {
        DataType::Bool => "boolean (true/false)",
        DataType::Bytes => "string",
        DataType::Fp16 | DataType::Bf16 => "binary (FP16 and BF16 travel only in binary form)",
        _ => "numeric",
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tensor data", self.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= self.max_depth {
            return Err(de::Error::custom(format!(
                "'data' is nested deeper than the tensor's rank ({})",
                self.max_depth
            )));
        }
        loop {
            let nested = Elements {
                dtype: self.dtype,
                out: &mut *self.out,
                remaining: &mut *self.remaining,
                depth: self.depth + 1,
                max_depth: self.max_depth,
            };
            if seq.next_element_seed(nested)?.is_none() {
                return Ok(());
            }
        }
    }

    fn visit_bool<E: de::Error>(mut self, value: bool) -> Result<(), E> {
        let dtype = self.dtype;
        self.push(|out| {
            if dtype != DataType::Bool {
                return Err(format!("expected {} data, found the boolean {value}", describe(dtype)));
            }
            out.push(u8::from(value));
            Ok(())
        })
    }

    fn visit_i64<E: de::Error>(mut self, value: i64) -> Result<(), E> {
        self.integer(i128::from(value))
    }

    fn visit_u64<E: de::Error>(mut self, value: u64) -> Result<(), E> {
        self.integer(i128::from(value))
    }

    fn visit_f64<E: de::Error>(mut self, value: f64) -> Result<(), E> {
        let dtype = self.dtype;
        self.push(|out| {
            match dtype {
                DataType::Fp32 => out.extend_from_slice(&(value as f32).to_le_bytes()),
                DataType::Fp64 => out.extend_from_slice(&value.to_le_bytes()),
                DataType::Bool | DataType::Bytes | DataType::Fp16 | DataType::Bf16 => {
                    return Err(format!("expected {} data, found the number {value}", describe(dtype)));
                }
                _ => return Err(format!("expected an integer for {dtype}, found {value}")),
            }
            Ok(())
        })
    }

    fn visit_str<E: de::Error>(mut self, value: &str) -> Result<(), E> {
        let dtype = self.dtype;
        self.push(|out| {
            if dtype != DataType::Bytes {
                return Err(format!("expected {} data, found a string", describe(dtype)));
            }
            push_bytes_element(out, value.as_bytes());
            Ok(())
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!("expected {} data, found null", describe(self.dtype))))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(de::Error::custom(format!("expected {} data, found an object", describe(self.dtype))))
    }
}

/// Appends `data` (little-endian elements of `dtype`) to `out` as a flat JSON
/// array. Non-finite floats become the strings "NaN", "Infinity" and
/// "-Infinity" (JSON has no such numbers; numpy reads those strings back).
pub fn write_data(out: &mut Vec<u8>, dtype: DataType, data: &[u8]) -> Result<(), String> {
    out.push(b'[');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    macro_rules! ints {
        ($t:ty) => {{
            let mut buf = itoa::Buffer::new();
            for chunk in data.chunks_exact(std::mem::size_of::<$t>()) {
                sep(out);
                let v = <$t>::from_le_bytes(chunk.try_into().expect("exact chunk"));
                out.extend_from_slice(buf.format(v).as_bytes());
            }
        }};
    }
    macro_rules! floats {
        ($t:ty) => {{
            let mut buf = ryu::Buffer::new();
            for chunk in data.chunks_exact(std::mem::size_of::<$t>()) {
                sep(out);
                let v = <$t>::from_le_bytes(chunk.try_into().expect("exact chunk"));
                if v.is_finite() {
                    out.extend_from_slice(buf.format_finite(v).as_bytes());
                } else if v.is_nan() {
                    out.extend_from_slice(b"\"NaN\"");
                } else if v > 0.0 {
                    out.extend_from_slice(b"\"Infinity\"");
                } else {
                    out.extend_from_slice(b"\"-Infinity\"");
                }
            }
        }};
    }
    match dtype {
        DataType::Bool => {
            for &b in data {
                sep(out);
                out.extend_from_slice(if b != 0 { b"true" } else { b"false" });
            }
        }
        DataType::Uint8 => ints!(u8),
        DataType::Uint16 => ints!(u16),
        DataType::Uint32 => ints!(u32),
        DataType::Uint64 => ints!(u64),
        DataType::Int8 => ints!(i8),
        DataType::Int16 => ints!(i16),
        DataType::Int32 => ints!(i32),
        DataType::Int64 => ints!(i64),
        DataType::Fp32 => floats!(f32),
        DataType::Fp64 => floats!(f64),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(format!("{dtype} outputs can only be returned in binary form (set \"binary_data\": true)"));
        }
        DataType::Bytes => {
            for element in bytes_elements(data) {
                let element = element.map_err(|e| e.to_string())?;
                let text = std::str::from_utf8(element)
                    .map_err(|_| "a BYTES output is not UTF-8; request it in binary form".to_owned())?;
                sep(out);
                serde_json::to_writer(&mut *out, text).map_err(|e| e.to_string())?;
            }
        }
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn parse(text: &str, dtype: DataType, count: usize, rank: usize) -> Result<Vec<u8>, String> {
        parse_data(&raw(text), dtype, count, rank)
    }

    #[test]
    fn flat_and_nested_data_parse_to_the_same_bytes() {
        let flat = parse("[1, 2, 3, 4]", DataType::Int32, 4, 2).unwrap();
        let nested = parse("[[1, 2], [3, 4]]", DataType::Int32, 4, 2).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(bytemuck::cast_slice::<u8, i32>(&flat), &[1, 2, 3, 4]);
        let floats = parse("[0.5, -1, 1e3]", DataType::Fp32, 3, 1).unwrap();
        assert_eq!(bytemuck::pod_collect_to_vec::<u8, f32>(&floats), vec![0.5, -1.0, 1000.0]);
        let strings = parse(r#"["a", "\u00e9"]"#, DataType::Bytes, 2, 1).unwrap();
        assert_eq!(strings, [1, 0, 0, 0, b'a', 2, 0, 0, 0, 0xc3, 0xa9]);
        assert_eq!(parse("[true, false]", DataType::Bool, 2, 1).unwrap(), vec![1, 0]);
        assert_eq!(parse("7", DataType::Int64, 1, 0).unwrap(), 7i64.to_le_bytes());
    }

    #[test]
    fn element_count_must_match_the_shape() {
        assert!(parse("[1, 2, 3]", DataType::Int32, 4, 1).unwrap_err().contains("holds 3 elements, the shape needs 4"));
        assert!(parse("[1, 2, 3, 4, 5]", DataType::Int32, 4, 1).unwrap_err().contains("more elements"));
    }

    #[test]
    fn values_of_the_wrong_kind_or_range_are_refused() {
        let cases = [
            ("[1.5]", DataType::Int32, "expected an integer"),
            ("[256]", DataType::Uint8, "out of range for UINT8"),
            ("[-1]", DataType::Uint32, "out of range"),
            ("[\"x\"]", DataType::Fp32, "found a string"),
            ("[1]", DataType::Bool, "boolean"),
            ("[true]", DataType::Fp32, "found the boolean"),
            ("[1.0]", DataType::Fp16, "binary"),
            ("[null]", DataType::Fp32, "null"),
            ("[{}]", DataType::Fp32, "object"),
            ("[[[1]]]", DataType::Fp32, "nested deeper"),
        ];
        for (text, dtype, expected) in cases {
            let error = parse(text, dtype, 1, 2).unwrap_err();
            assert!(error.contains(expected), "{text} as {dtype}: {error}");
        }
    }

    #[test]
    fn deeply_nested_data_fails_cleanly_without_recursing_far() {
        let text = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(parse(&text, DataType::Fp32, 1, 3).is_err());
    }

    #[test]
    fn fp64_data_parses_to_the_exact_double_the_client_wrote() {
        // Shortest round-trip text of many doubles (what Python's json and ryu
        // write) must parse back to the same bits: serde_json's fast float
        // parser is off by one ulp for some, which changes FP64 inputs.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let values: Vec<f64> = (0..4096)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (state >> 11) as f64 / (1u64 << 53) as f64 * 2000.0 - 1000.0
            })
            .collect();
        let mut buf = ryu::Buffer::new();
        let text =
            format!("[{}]", values.iter().map(|v| buf.format_finite(*v).to_owned()).collect::<Vec<_>>().join(","));
        let parsed = parse(&text, DataType::Fp64, values.len(), 1).unwrap();
        let wrong = bytemuck::pod_collect_to_vec::<u8, f64>(&parsed)
            .iter()
            .zip(&values)
            .filter(|(got, sent)| got.to_bits() != sent.to_bits())
            .count();
        assert_eq!(wrong, 0, "{wrong} of {} doubles changed in parsing", values.len());
    }

    /// Both paths on the same text, with the fast path's own answer.
    fn both(text: &str, dtype: DataType, count: usize, rank: usize) -> Option<Vec<u8>> {
        let raw = raw(text);
        assert_eq!(
            parse_data(&raw, dtype, count, rank),
            parse_with_serde(&raw, dtype, count, rank),
            "{text} as {dtype}"
        );
        parse_plain_floats(text.as_bytes(), dtype, count, rank.max(1))
    }

    #[test]
    fn the_float_fast_path_gives_exactly_what_serde_json_gives() {
        let mut numbers: Vec<String> = [
            "0",
            "-0",
            "1",
            "-1",
            "0.5",
            "-0.0",
            "1e3",
            "1E-7",
            "2.5e+2",
            "-2.5E-2",
            "16777217",
            "-16777217",
            "999999999999999",
            "-999999999999999",
            "3.4028235e38",
            "3.4028236e38",
            "1e-46",
            "1e-320",
            "0.1",
            "-3.141592653589793",
            "9007199254740993.0",
            "1.00000005960464477539062500001",
            "0e0",
            "-0e-0",
        ]
        .map(str::to_owned)
        .into();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut buf = ryu::Buffer::new();
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let double = f64::from_bits(state);
            if double.is_finite() {
                numbers.push(buf.format_finite(double).to_owned());
            }
            let single = f32::from_bits((state >> 32) as u32);
            if single.is_finite() {
                numbers.push(buf.format_finite(single).to_owned());
            }
            numbers.push(format!("{}", (state % 2_000_001) as i64 - 1_000_000));
        }
        for dtype in [DataType::Fp32, DataType::Fp64] {
            let flat = format!("[{}]", numbers.join(", "));
            assert!(both(&flat, dtype, numbers.len(), 1).is_some(), "the fast path took {dtype}");
            let nested = format!(" [ [{}] ,\n[{}] ]\t", numbers[..10].join(","), numbers[10..].join(","));
            assert!(both(&nested, dtype, numbers.len(), 2).is_some());
            for number in &numbers {
                both(&format!("[{number}]"), dtype, 1, 1);
            }
        }
    }

    #[test]
    fn the_float_fast_path_leaves_everything_else_to_serde_json() {
        let declined = [
            "[1,]",
            "[,1]",
            "[]",
            "[01]",
            "[-01]",
            "[1.]",
            "[.5]",
            "[+1]",
            "[1e]",
            "[1e+]",
            "[-]",
            "[NaN]",
            "[Infinity]",
            "[1 2]",
            "[1]]",
            "[[1]",
            "1",
            "[1e400]",
            "[-1e400]",
            "[\"1\"]",
            "[null]",
            "[true]",
            "[{}]",
            "[[[1]]]",
            "[1] x",
            "[1234567890123456]",
            "[1,2]",
            "[1\u{0}]",
            "[0x10]",
            "[1_0]",
        ];
        for text in declined {
            for dtype in [DataType::Fp32, DataType::Fp64] {
                // Texts that are not JSON at all never reach `parse_data` (the
                // body fails to parse first); the fast path must still decline.
                if RawValue::from_string(text.to_owned()).is_ok() {
                    assert_eq!(both(text, dtype, 1, 2), None, "{text} as {dtype}");
                } else {
                    assert_eq!(parse_plain_floats(text.as_bytes(), dtype, 1, 2), None, "{text} as {dtype}");
                }
            }
        }
        // Ragged nesting within the rank is what serde's visitor accepts too.
        assert!(both("[[1], [2, 3], []]", DataType::Fp32, 3, 2).is_some());
    }

    #[test]
    fn outputs_are_written_as_json_numbers_that_round_trip() {
        let mut out = Vec::new();
        let values = [0.1f32, -2.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-7];
        write_data(&mut out, DataType::Fp32, bytemuck::cast_slice(&values)).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"[0.1,-2.5,"NaN","Infinity","-Infinity",1e-7]"#);
        let mut out = Vec::new();
        write_data(&mut out, DataType::Int64, bytemuck::cast_slice(&[i64::MIN, 3])).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("[{},3]", i64::MIN));
        let mut out = Vec::new();
        let mut strings = Vec::new();
        push_bytes_element(&mut strings, b"a\"b");
        write_data(&mut out, DataType::Bytes, &strings).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"["a\"b"]"#);
        assert!(write_data(&mut Vec::new(), DataType::Fp16, &[0, 0]).unwrap_err().contains("binary"));
    }
}
