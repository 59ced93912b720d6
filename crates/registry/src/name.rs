//! Names of models and aliases: `[A-Za-z0-9_.-]{1,128}`, checked once when
//! parsed, so nothing downstream (paths, SQL, URLs) sees anything else.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::RegistryError;

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// A checked model or alias name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Checks `given` as the name of a `what` (used in the error message).
    pub fn parse(what: &'static str, given: &str) -> Result<Name, RegistryError> {
        let ok = !given.is_empty()
            && given.len() <= MAX_NAME_LEN
            && given != "."
            && given != ".."
            && given.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok { Ok(Name(given.to_owned())) } else { Err(RegistryError::InvalidName { what, given: given.to_owned() }) }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        let text = String::deserialize(deserializer)?;
        Name::parse("name", &text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_safe_alphabet_is_accepted() {
        for good in ["fraud", "Fraud_v2", "a.b-c", "x", &"a".repeat(MAX_NAME_LEN)] {
            assert!(Name::parse("model", good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", "a\0", "a;drop", &"a".repeat(MAX_NAME_LEN + 1)] {
            let error = Name::parse("model", bad).expect_err(bad);
            assert!(error.to_string().contains("[A-Za-z0-9_.-]"), "{error}");
        }
    }
}
