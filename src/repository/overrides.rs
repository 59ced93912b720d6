//! Per-model settings from the gateway's own config (`[models.<name>]`), laid
//! over the model's `config.pbtxt` when it loads.
//!
//! Operators often cannot edit the repository (it comes from a registry or a
//! read-only volume) but must still tune batching and instances for the
//! machine the gateway runs on. What the gateway config says wins over the
//! file, field by field; what it leaves out, the file decides.
//!
//! ```toml
//! [models.mlp]
//! max_batch_size = 32
//! instances = 2                # instances on `device`
//! device = "cpu"               # or "cuda:0"
//! dynamic_batching = { max_queue_delay_microseconds = 100, preferred_batch_size = [16, 32] }
//! # dynamic_batching = false   # run each request as it comes
//! ```

use serde::Deserialize;

use super::model_config::{ConfigFile, DynamicBatching, InstanceGroup, InstanceKind};

/// What `[models.<name>]` may set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    /// `max_batch_size` (0: the model does not batch).
    pub max_batch_size: Option<u32>,
    /// The dynamic batcher: a table of its settings, `true` for its defaults,
    /// `false` to turn it off.
    pub dynamic_batching: Option<BatchingOverride>,
    /// Number of instances, replacing the file's `instance_group`s.
    pub instances: Option<u32>,
    /// Where the instances run: `cpu` or `cuda:N` (default `cpu`).
    pub device: Option<String>,
}

/// `dynamic_batching = false | true | { ... }`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum BatchingOverride {
    /// On with the defaults, or off.
    Switch(bool),
    /// On with these settings (Triton's field names).
    Settings(DynamicBatching),
}

impl ModelOverrides {
    /// Checks what the types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.instances == Some(0) {
            return Err("instances must be at least 1".into());
        }
        if self.device.is_some() && self.instances.is_none() {
            return Err("device needs instances (how many to place there)".into());
        }
        if let Some(device) = &self.device {
            parse_device(device)?;
        }
        if let Some(BatchingOverride::Settings(s)) = &self.dynamic_batching
            && let Some(max) = self.max_batch_size
            && let Some(too_big) = s.preferred_batch_size.iter().find(|&&p| p == 0 || p > max)
        {
            return Err(format!("preferred_batch_size {too_big} is not between 1 and max_batch_size {max}"));
        }
        Ok(())
    }

    /// Lays these settings over a model's config file.
    pub fn apply(&self, file: &mut ConfigFile) {
        if let Some(max) = self.max_batch_size {
            file.max_batch_size = Some(max);
        }
        match &self.dynamic_batching {
            None => {}
            Some(BatchingOverride::Switch(false)) => file.dynamic_batching = None,
            Some(BatchingOverride::Switch(true)) => {
                file.dynamic_batching.get_or_insert_with(DynamicBatching::default);
            }
            Some(BatchingOverride::Settings(settings)) => file.dynamic_batching = Some(settings.clone()),
        }
        if let Some(count) = self.instances {
            let (kind, gpus) = match self.device.as_deref().map(parse_device) {
                Some(Ok(Some(gpu))) => (InstanceKind::Gpu, vec![gpu]),
                _ => (InstanceKind::Cpu, Vec::new()),
            };
            file.instance_groups = vec![InstanceGroup { name: "gateway_config".into(), kind, count, gpus }];
        }
    }
}

/// `cpu` → `None`, `cuda:N` → `Some(N)`.
fn parse_device(device: &str) -> Result<Option<u32>, String> {
    if device == "cpu" {
        return Ok(None);
    }
    device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| format!("device must be \"cpu\" or \"cuda:N\", got {device:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelOverrides, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn batching_settings_replace_the_files_and_the_rest_is_kept() {
        let mut file = ConfigFile {
            max_batch_size: Some(8),
            dynamic_batching: Some(DynamicBatching { max_queue_delay_microseconds: 50, ..Default::default() }),
            ..Default::default()
        };
        let overrides =
            parse("max_batch_size = 32\ndynamic_batching = { preferred_batch_size = [16, 32], max_queue_size = 100 }")
                .unwrap();
        overrides.validate().unwrap();
        overrides.apply(&mut file);
        assert_eq!(file.max_batch_size, Some(32));
        let batching = file.dynamic_batching.unwrap();
        assert_eq!(batching.preferred_batch_size, vec![16, 32]);
        assert_eq!((batching.max_queue_delay_microseconds, batching.max_queue_size), (0, 100));
        assert!(file.instance_groups.is_empty(), "instances untouched when not set");
    }

    #[test]
    fn batching_can_be_switched_off_and_on() {
        let mut file = ConfigFile {
            dynamic_batching: Some(DynamicBatching { max_queue_delay_microseconds: 50, ..Default::default() }),
            ..Default::default()
        };
        parse("dynamic_batching = true").unwrap().apply(&mut file);
        assert_eq!(file.dynamic_batching.as_ref().unwrap().max_queue_delay_microseconds, 50, "true keeps the file's");
        parse("dynamic_batching = false").unwrap().apply(&mut file);
        assert_eq!(file.dynamic_batching, None);
        parse("dynamic_batching = true").unwrap().apply(&mut file);
        assert_eq!(file.dynamic_batching, Some(DynamicBatching::default()));
    }

    #[test]
    fn instances_replace_the_instance_groups_on_their_device() {
        let mut file = ConfigFile::default();
        parse("instances = 3\ndevice = \"cuda:1\"").unwrap().apply(&mut file);
        assert_eq!(file.instance_groups.len(), 1);
        let group = &file.instance_groups[0];
        assert_eq!((group.kind, group.count, group.gpus.clone()), (InstanceKind::Gpu, 3, vec![1]));
        parse("instances = 2").unwrap().apply(&mut file);
        assert_eq!((file.instance_groups[0].kind, file.instance_groups[0].count), (InstanceKind::Cpu, 2));
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        assert!(parse("max_batch = 4").is_err(), "unknown keys are refused");
        assert!(parse("dynamic_batching = { max_delay = 4 }").is_err());
        let invalid = |text: &str| parse(text).unwrap().validate().unwrap_err();
        assert!(invalid("instances = 0").contains("at least 1"));
        assert!(invalid("instances = 1\ndevice = \"gpu\"").contains("cuda:N"));
        assert!(invalid("device = \"cpu\"").contains("needs instances"));
        assert!(invalid("max_batch_size = 8\ndynamic_batching = { preferred_batch_size = [16] }").contains("16"));
    }
}
