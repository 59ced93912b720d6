//! The last-known-good state (`state/snapshot.json`): the last desired state
//! whose every file verified, and what each model served under it. A gateway
//! that starts while its control plane is unreachable serves it (Envoy's
//! latched config; TorchServe's snapshots).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modelgate_registry::sync::DesiredState;
use serde::{Deserialize, Serialize};

use super::plan::Served;

/// What a gateway served, as of a verified desired state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The desired state.
    pub state: DesiredState,
    /// Per served model name.
    pub served: BTreeMap<String, Served>,
}

/// Where the snapshot lives under the gateway's root.
pub fn path(root: &Path) -> PathBuf {
    root.join("state").join("snapshot.json")
}

/// Reads the snapshot; `None` when there is none (or it does not parse, which is
/// logged: a torn write cannot happen, see [`save`], but a hand edit can).
pub fn load(path: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(snapshot) => Some(snapshot),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "the last-known-good snapshot does not parse; ignored");
            None
        }
    }
}

/// Writes the snapshot whole or not at all: a temp file, fsync, rename, fsync
/// of the directory.
pub async fn save(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("snapshot path has no directory"))?;
    tokio::fs::create_dir_all(dir).await?;
    let temp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(snapshot).map_err(std::io::Error::other)?;
    {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(&temp).await?;
        file.write_all(&bytes).await?;
        file.sync_all().await?;
    }
    tokio::fs::rename(&temp, path).await?;
    super::cache::sync_dir(dir).await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_saved_snapshot_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let at = path(dir.path());
        assert_eq!(load(&at), None);
        let mut snapshot = Snapshot::default();
        snapshot.state.generation = 42;
        snapshot.served.insert("m".into(), Served { stable: 3, canary: Some(4), stable_alias_seen: Some(4) });
        save(&at, &snapshot).await.unwrap();
        assert_eq!(load(&at), Some(snapshot));
        std::fs::write(&at, b"{not json").unwrap();
        assert_eq!(load(&at), None);
    }
}
