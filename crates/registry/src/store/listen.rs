//! Wakes this replica's long polls when another replica commits: every
//! change on PostgreSQL sends `NOTIFY modelgate_generation, '<generation>'`
//! inside its transaction (delivered at commit, dropped on rollback), and
//! one `LISTEN` connection per replica turns each notification into a wake
//! of the local waiters.
//!
//! Notifications sent while the listening connection is down are lost
//! (PostgreSQL keeps none for a session that is not there), so the waiters
//! also re-read the generation every second (`api::sync`), and a reconnect
//! wakes them all at once to re-read. SQLite has one process, so it needs
//! none of this.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;

/// The channel every replica listens on.
pub const CHANNEL: &str = "modelgate_generation";

/// The pause before connecting again after the listener could not connect.
const RETRY: Duration = Duration::from_secs(1);

/// Listens on [`CHANNEL`] at `url` until aborted, waking `changed`'s waiters on every
/// notification and after every reconnect.
pub(super) fn spawn(url: String, changed: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut listener = match connect(&url).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "cannot LISTEN for other replicas' changes; retrying (polls re-read each second)");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            // Whatever was sent while no one listened is lost: let every waiter re-read now.
            changed.notify_waiters();
            loop {
                match listener.try_recv().await {
                    Ok(Some(_notification)) => changed.notify_waiters(),
                    // The connection dropped; PgListener reconnects on the next call.
                    Ok(None) => {
                        tracing::warn!("the LISTEN connection to PostgreSQL dropped; reconnecting");
                        changed.notify_waiters();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the LISTEN connection to PostgreSQL failed; reconnecting");
                        tokio::time::sleep(RETRY).await;
                        break;
                    }
                }
            }
        }
    })
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
