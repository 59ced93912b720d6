//! The instance threads over the fake backend. Batches form only when an
//! instance is free, so each test holds the fake's executions
//! ([`FakeModel::hold`]) while it queues requests: what the next batches hold
//! is then decided, not raced. Waits have a timeout only so that a broken
//! scheduler fails the test instead of hanging it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use modelgate_backend::DataType;
use modelgate_backend::fake::{Behaviour, FailAs, Failure, FakeModel};
use tokio::sync::oneshot;

use crate::batching::{BatchPolicy, Reply, Scheduler};
use crate::error::{Error, Fault};
use crate::metrics::VersionMetrics;
use crate::stats::ModelStats;
use crate::tensor::{Tensor, ValidRequest};

/// Longest a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);
/// Columns of both inputs.
const WIDTH: usize = 2;

fn policy(max_batch_size: usize, combine: bool) -> BatchPolicy {
    BatchPolicy { max_batch_size, combine, preferred: Vec::new(), max_delay: Duration::ZERO, max_queue_size: 64 }
}

fn start(model: &Arc<FakeModel>, instances: usize, policy: BatchPolicy) -> Scheduler {
    start_polling(model, instances, policy, Duration::ZERO)
}

/// Instances that poll an empty queue for `spin` before they park.
fn start_polling(model: &Arc<FakeModel>, instances: usize, policy: BatchPolicy, spin: Duration) -> Scheduler {
    let stats = Arc::new(ModelStats::new(policy.max_batch_size));
    let metrics = Arc::new(VersionMetrics::new("fake", 1));
    Scheduler::start("fake", policy, spin, model.instances(instances), stats, metrics, None).unwrap()
}

/// The values of input `a` of request `id`: row `r` holds `id * 100 + r` in
/// every column, so no two requests share a value. Input `b` holds their negatives.
fn values(id: usize, rows: usize) -> Vec<i32> {
    (0..rows).flat_map(|r| std::iter::repeat_n((id * 100 + r) as i32, WIDTH)).collect()
}

fn tensor(name: &str, rows: usize, values: &[i32]) -> Tensor {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::checked(name.into(), DataType::Int32, vec![rows as i64, WIDTH as i64], Bytes::from(data)).unwrap()
}

/// Request `id` of `rows` rows, asking for `outputs` (0 echoes `a`, 1 echoes `b`).
fn request_for(id: usize, rows: usize, outputs: &[usize]) -> ValidRequest {
    let a = values(id, rows);
    let b: Vec<i32> = a.iter().map(|v| -v).collect();
    ValidRequest {
        inputs: vec![tensor("a", rows, &a), tensor("b", rows, &b)],
        batch_size: rows,
        outputs: outputs.into(),
        binary: smallvec::smallvec![false; outputs.len()],
    }
}

fn request(id: usize, rows: usize) -> ValidRequest {
    request_for(id, rows, &[0])
}

async fn answer(receiver: oneshot::Receiver<Reply>) -> Reply {
    tokio::time::timeout(WAIT, receiver).await.expect("answered in time").expect("the instance answered")
}

fn as_i32(data: &[u8]) -> Vec<i32> {
    data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Asserts that `reply` holds exactly request `id`'s own rows of each of `outputs`.
fn assert_own_rows(reply: Reply, id: usize, rows: usize, outputs: &[usize]) {
    let tensors = reply.unwrap_or_else(|e| panic!("request {id} failed: {e}"));
    assert_eq!(tensors.len(), outputs.len(), "request {id}: one tensor per output asked for");
    for (tensor, &output) in tensors.iter().zip(outputs) {
        let sign = if output == 0 { 1 } else { -1 };
        let expected: Vec<i32> = values(id, rows).iter().map(|v| sign * v).collect();
        assert_eq!(tensor.shape, [rows as i64, WIDTH as i64], "request {id} output {output}");
        assert_eq!(as_i32(&tensor.data), expected, "request {id} output {output}");
    }
}

fn assert_server_error(reply: Reply, what: &str) -> Error {
    let error = reply.expect_err(what);
    assert_eq!(error.fault(), Fault::Server, "{what}: {error:?}");
    assert_eq!(error.http_status(), http::StatusCode::INTERNAL_SERVER_ERROR, "{what}: {error:?}");
    error
}

/// Holds `model`, submits a one-row request 0 and waits until the only
/// instance runs it: whatever is submitted next waits in the queue.
async fn busy(model: &Arc<FakeModel>, scheduler: &Scheduler) -> oneshot::Receiver<Reply> {
    model.hold();
    let first = scheduler.submit(request(0, 1), None).unwrap();
    assert!(model.wait_for_running(1, WAIT), "the instance never started request 0");
    first
}

#[tokio::test]
async fn requests_queued_together_share_batches_up_to_max_batch_size_and_each_gets_its_own_rows() {
    let model = FakeModel::new();
    let scheduler = start(&model, 1, policy(4, true));
    let first = busy(&model, &scheduler).await;
    // Rows per request, and the outputs each asks for.
    let queued = [(2, &[0, 1][..]), (1, &[1]), (2, &[0]), (1, &[1, 0]), (3, &[0, 1])];
    let receivers: Vec<_> = queued
        .iter()
        .enumerate()
        .map(|(i, &(rows, outputs))| scheduler.submit(request_for(i + 1, rows, outputs), None).unwrap())
        .collect();
    assert_eq!(scheduler.queue_depth(), queued.len());
    model.release();

    assert_own_rows(answer(first).await, 0, 1, &[0]);
    for (i, (receiver, &(rows, outputs))) in receivers.into_iter().zip(&queued).enumerate() {
        assert_own_rows(answer(receiver).await, i + 1, rows, outputs);
    }
    // Requests 1, 2 and 4 fill a batch of 4 (3 would overflow it); then 3 and 5 do not fit together.
    assert_eq!(model.batch_sizes(), [1, 4, 2, 3]);
}

#[tokio::test]
async fn a_failing_batch_fails_each_of_its_requests_with_a_server_error_and_the_instance_keeps_serving() {
    let model = FakeModel::new();
    let scheduler = start(&model, 1, policy(8, true));
    let first = busy(&model, &scheduler).await;
    model.set_failure(Failure::Always);
    let doomed: Vec<_> = (1..=3).map(|id| scheduler.submit(request(id, 1), None).unwrap()).collect();
    model.release();

    assert_own_rows(answer(first).await, 0, 1, &[0]);
    for (i, receiver) in doomed.into_iter().enumerate() {
        let error = assert_server_error(answer(receiver).await, &format!("doomed request {}", i + 1));
        assert!(error.message().contains("fake failure"), "{error:?}");
    }
    // The batch of 3 failed, then each request failed again alone.
    assert_eq!(model.batch_sizes(), [1, 3, 1, 1, 1]);

    model.set_failure(Failure::Never);
    let after = scheduler.submit(request(4, 2), None).unwrap();
    assert_own_rows(answer(after).await, 4, 2, &[0]);
}

#[tokio::test]
async fn when_a_batch_fails_only_the_request_the_backend_refuses_fails() {
    const MARK: i32 = 200; // request 2's first value
    let model = FakeModel::with(Behaviour { failure: Failure::on_i32(MARK), ..Behaviour::default() });
    let scheduler = start(&model, 1, policy(8, true));
    let first = busy(&model, &scheduler).await;
    let receivers: Vec<_> = (1..=3).map(|id| scheduler.submit(request(id, 1), None).unwrap()).collect();
    model.release();

    assert_own_rows(answer(first).await, 0, 1, &[0]);
    let mut replies = Vec::new();
    for receiver in receivers {
        replies.push(answer(receiver).await);
    }
    let mut replies = replies.into_iter();
    assert_own_rows(replies.next().unwrap(), 1, 1, &[0]);
    assert_server_error(replies.next().unwrap(), "the request holding the marker");
    assert_own_rows(replies.next().unwrap(), 3, 1, &[0]);
    let failed: Vec<bool> = model.batches().iter().map(|b| b.failed).collect();
    assert_eq!(failed, [false, true, false, true, false], "the batch of 3 fails, then only request 2 alone");
}

#[tokio::test]
async fn a_backend_that_panics_fails_its_batch_and_the_instance_keeps_serving() {
    let model = FakeModel::with(Behaviour { failure: Failure::Always, fail_as: FailAs::Panic, ..Behaviour::default() });
    let scheduler = start(&model, 1, policy(8, true));
    let error = assert_server_error(answer(scheduler.submit(request(1, 1), None).unwrap()).await, "panicked batch");
    assert!(error.message().contains("panicked"), "{error:?}");

    model.set_failure(Failure::Never);
    assert_own_rows(answer(scheduler.submit(request(2, 1), None).unwrap()).await, 2, 1, &[0]);
}

#[tokio::test]
async fn a_request_whose_deadline_passed_in_the_queue_is_answered_without_running() {
    let model = FakeModel::new();
    let scheduler = start(&model, 1, policy(8, true));
    let first = busy(&model, &scheduler).await;
    let late = scheduler.submit(request(1, 1), Some(Instant::now())).unwrap();
    let on_time = scheduler.submit(request(2, 1), Some(Instant::now() + Duration::from_secs(3600))).unwrap();
    model.release();

    assert_own_rows(answer(first).await, 0, 1, &[0]);
    let error = answer(late).await.expect_err("the late request must not be answered with outputs");
    assert!(matches!(error, Error::DeadlineExceeded(_)), "{error:?}");
    assert_eq!(error.fault(), Fault::Server);
    assert_own_rows(answer(on_time).await, 2, 1, &[0]);
    assert_eq!(model.batch_sizes(), [1, 1], "the late request never reached the backend");
}

#[tokio::test]
async fn the_instances_of_a_version_run_batches_at_the_same_time() {
    let model = FakeModel::new();
    let scheduler = start(&model, 2, policy(8, false));
    model.hold();
    let receivers: Vec<_> = (1..=2).map(|id| scheduler.submit(request(id, 1), None).unwrap()).collect();
    let both = model.wait_for_running(2, WAIT);
    model.release();
    assert!(both, "two instances never ran at once");
    for (i, receiver) in receivers.into_iter().enumerate() {
        assert_own_rows(answer(receiver).await, i + 1, 1, &[0]);
    }
    let mut instances: Vec<usize> = model.batches().iter().map(|b| b.instance).collect();
    instances.sort_unstable();
    assert_eq!(instances, [0, 1]);
}

#[tokio::test]
async fn a_client_that_leaves_frees_its_queue_slot_and_its_request_never_runs() {
    let model = FakeModel::new();
    let scheduler = start(&model, 1, BatchPolicy { max_queue_size: 2, ..policy(8, true) });
    let first = busy(&model, &scheduler).await;
    let leaving = scheduler.submit(request(1, 1), None).unwrap();
    let staying = scheduler.submit(request(2, 1), None).unwrap();
    let refused = scheduler.submit(request(3, 1), None).expect_err("the queue holds 2");
    assert!(matches!(refused, Error::Unavailable(_)), "a full queue is a 503: {refused:?}");
    drop(leaving);
    let admitted = scheduler.submit(request(4, 1), None).expect("the slot of the client that left is free");
    model.release();

    assert_own_rows(answer(first).await, 0, 1, &[0]);
    assert_own_rows(answer(staying).await, 2, 1, &[0]);
    assert_own_rows(answer(admitted).await, 4, 1, &[0]);
    assert_eq!(model.batch_sizes(), [1, 2], "requests 2 and 4 ran together; request 1 never ran");
}

#[tokio::test]
async fn dropping_the_scheduler_lets_the_queued_requests_finish() {
    let model = FakeModel::new();
    let scheduler = start(&model, 1, policy(8, true));
    let first = busy(&model, &scheduler).await;
    let queued: Vec<_> = (1..=3).map(|id| scheduler.submit(request(id, 1), None).unwrap()).collect();
    drop(scheduler);
    model.release();

    assert_own_rows(answer(first).await, 0, 1, &[0]);
    for (i, receiver) in queued.into_iter().enumerate() {
        assert_own_rows(answer(receiver).await, i + 1, 1, &[0]);
    }
    assert_eq!(model.batch_sizes(), [1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_instances_answer_requests_that_come_while_they_poll_and_after_they_parked() {
    let model = FakeModel::new();
    let scheduler = start_polling(&model, 2, policy(4, true), Duration::from_millis(2));
    // Back to back, inside one poll, and after the poll ended and the instances parked.
    let gaps = [0, 0, 100, 300, 1_000, 5_000, 20_000, 0, 5_000];
    for (id, gap) in gaps.into_iter().enumerate() {
        std::thread::sleep(Duration::from_micros(gap));
        let reply = answer(scheduler.submit(request(id, 1), None).unwrap()).await;
        assert_own_rows(reply, id, 1, &[0]);
    }
    // A runtime worker about to park while a request runs polls until its
    // answer is sent (20 ms here), not for its whole bound.
    model.hold();
    let waiting = scheduler.submit(request(99, 1), None).unwrap();
    assert!(model.wait_for_running(1, WAIT), "the instance never started request 99");
    let releaser = {
        let model = model.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            model.release();
        })
    };
    let started = Instant::now();
    crate::batching::spin::await_answer_before_park(Duration::from_secs(5));
    let polled = started.elapsed();
    assert!(polled < Duration::from_secs(1), "polled {polled:?}");
    assert_own_rows(answer(waiting).await, 99, 1, &[0]);
    releaser.join().unwrap();
}
