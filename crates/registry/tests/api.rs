//! The `/cp/v1` API through a real socket, on SQLite and PostgreSQL: the bad
//! inputs of issue #9 and the alias rules.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{Backend, Server, TOKEN, answer, backends, error_of};
use modelgate_registry::RegistryError;
use modelgate_registry::digest::Digest;
use modelgate_registry::types::NewVersion;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp_files(server: &Server) -> usize {
    std::fs::read_dir(server.data_dir().join("blobs/tmp")).unwrap().count()
}

#[tokio::test]
async fn blobs_are_verified_stored_once_and_served_with_ranges() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let bytes = b"0123456789abcdef".repeat(100);
        let digest = Digest::of(&bytes);
        let url = server.url(&format!("/cp/v1/blobs/{digest}"));
        let first = server.http.put(&url).body(bytes.clone()).send().await.unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        let again = server.http.put(&url).body(bytes.clone()).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::OK, "idempotent");
        let got = server.http.get(&url).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.bytes().await.unwrap(), bytes);
        let range = server.http.get(&url).header("range", "bytes=16-31").send().await.unwrap();
        assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(range.bytes().await.unwrap(), &bytes[16..32]);

        // Bytes that hash to something else than the URL says.
        let other = Digest::of(b"something else");
        let (status, body) = answer(
            server.http.put(server.url(&format!("/cp/v1/blobs/{other}"))).body(bytes.clone()).send().await.unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&body).contains("digest mismatch"), "{body}");
        let (status, _) = server.get(&format!("/cp/v1/blobs/{other}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "a refused upload is not stored");

        // Over the blob limit (1 MiB in the tests): refused before reading.
        let big = vec![7u8; (1 << 20) + 1];
        let (status, body) = answer(
            server.http.put(server.url(&format!("/cp/v1/blobs/{}", Digest::of(&big)))).body(big).send().await.unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

        // Malformed digests.
        for bad in ["sha256:xyz", "md5:abc", "sha256:ABCDEF"] {
            let (status, body) =
                answer(server.http.put(server.url(&format!("/cp/v1/blobs/{bad}"))).body("x").send().await.unwrap())
                    .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert!(error_of(&body).contains("invalid digest"), "{body}");
        }

        // No declared size: a streamed body without Content-Length.
        let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"abc"))]);
        let (status, _) = answer(
            server
                .http
                .put(server.url(&format!("/cp/v1/blobs/{}", Digest::of(b"abc"))))
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::LENGTH_REQUIRED);
        assert_eq!(temp_files(&server), 0, "{backend:?}: no temp file left");
        server.stop().await;
    }
}

#[tokio::test]
async fn an_upload_cut_off_midway_leaves_no_blob_only_the_part_to_resume() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let bytes = vec![42u8; 100_000];
        let digest = Digest::of(&bytes);
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "PUT /cp/v1/blobs/{digest} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: {}\r\n\r\n",
            bytes.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&bytes[..50_000]).await.unwrap();
        socket.flush().await.unwrap();
        // Give the server time to start writing the temp file, then go away.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(socket);
        let mut held = None;
        for _ in 0..50 {
            // 409 while the server has not yet noticed the cut.
            let (status, body) = server.get(&format!("/cp/v1/uploads/{digest}")).await;
            if status == StatusCode::OK {
                held = Some(body);
                break;
            }
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held = held.expect("the server noticed the cut");
        assert_eq!(held["received"], 50_000, "{backend:?}: {held}");
        assert_eq!(held["complete"], false);
        assert_eq!(temp_files(&server), 1, "{backend:?}: only the part to resume is left");
        let (status, _) = server.get(&format!("/cp/v1/blobs/{digest}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // A client that sends fewer bytes than declared and waits for the answer gets 400.
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&bytes[..10]).await.unwrap();
        socket.shutdown().await.unwrap();
        let mut reply = String::new();
        let _ = socket.read_to_string(&mut reply).await;
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 400"), "{reply}");

        // The whole upload then works.
        assert_eq!(server.put_blob(&bytes).await, digest);
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_manifests_names_and_fields_are_refused_with_clear_errors() {
    for backend in backends() {
        let server = Server::start(backend).await;
        server.create_model("fraud").await;
        let model_bytes = b"onnx bytes".to_vec();
        let digest = server.put_blob(&model_bytes).await;
        let entry = |path: &str| json!({ "path": path, "size": model_bytes.len(), "sha256": digest });
        let missing = Digest::of(b"never uploaded");
        let cases = [
            (
                json!({ "format": "onnx", "files": [{ "path": "m.onnx", "size": 14, "sha256": missing }] }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing",
            ),
            (
                json!({ "format": "onnx", "files": [{ "path": "m.onnx", "size": 3, "sha256": digest }] }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "size is not 3",
            ),
            (json!({ "format": "onnx", "files": [entry("../x")] }), StatusCode::BAD_REQUEST, "'..'"),
            (json!({ "format": "onnx", "files": [entry("/etc/passwd")] }), StatusCode::BAD_REQUEST, "absolute"),
            (
                json!({ "format": "onnx", "files": [entry("m.onnx"), entry("m.onnx")] }),
                StatusCode::BAD_REQUEST,
                "appears twice",
            ),
            (json!({ "format": "onnx", "files": [] }), StatusCode::BAD_REQUEST, "at least one file"),
            (
                json!({ "format": "onnx", "files": (0..9).map(|i| entry(&format!("f{i}"))).collect::<Vec<_>>() }),
                StatusCode::BAD_REQUEST,
                "at most 8",
            ),
            (json!({ "format": "tensorflow", "files": [entry("m.onnx")] }), StatusCode::BAD_REQUEST, "unknown variant"),
            (
                json!({ "format": "onnx", "files": [entry("m.onnx")], "colour": "red" }),
                StatusCode::BAD_REQUEST,
                "unknown field `colour`",
            ),
            (
                json!({ "format": "onnx", "files": [{ "path": "m.onnx", "size": 14, "sha256": digest, "mode": 420 }] }),
                StatusCode::BAD_REQUEST,
                "unknown field `mode`",
            ),
            (
                json!({ "format": "onnx", "files": [entry("m.onnx")], "lineage": { "runid": "x" } }),
                StatusCode::BAD_REQUEST,
                "unknown field `runid`",
            ),
        ];
        for (body, want, says) in cases {
            let (status, answer) = server.post("/cp/v1/models/fraud/versions", body.clone()).await;
            assert_eq!(status, want, "{backend:?} {body}: {answer}");
            assert!(error_of(&answer).contains(says), "{body}: {answer}");
        }
        let (status, answer) =
            server.post("/cp/v1/models/nobody/versions", json!({ "format": "onnx", "files": [entry("m.onnx")] })).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
        assert!(error_of(&answer).contains("'nobody' not found"));
        for bad in ["a b", "x/y", "..", "é"] {
            let (status, answer) = server.post("/cp/v1/models", json!({ "name": bad })).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        }
        let (status, answer) = server.get("/cp/v1/models/bad%20name/versions").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(error_of(&answer).contains("[A-Za-z0-9_.-]"));
        let (status, answer) = server.post("/cp/v1/models", json!({ "name": "ok", "owner": "me" })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&answer).contains("unknown field `owner`"), "{answer}");
        let (status, _) = server.post("/cp/v1/models", json!({ "name": "fraud" })).await;
        assert_eq!(status, StatusCode::CONFLICT);

        // Nothing above created a version or an event beyond the model's.
        let (_, versions) = server.get("/cp/v1/models/fraud/versions").await;
        assert_eq!(versions["versions"].as_array().unwrap().len(), 0);
        let (_, events) = server.get("/cp/v1/events").await;
        assert_eq!(events["generation"], 1, "{events}");

        // And a good manifest makes version 1, whose identity is the manifest digest.
        let v = server.push("fraud", &[("1/model.onnx", b"onnx bytes"), ("config.pbtxt", b"name: \"fraud\"")]).await;
        assert_eq!(v, 1);
        let (_, version) = server.get("/cp/v1/models/fraud/versions/1").await;
        assert_eq!(version["status"], "READY");
        assert!(version["manifest_digest"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(version["manifest"].as_array().unwrap()[0]["path"], "1/model.onnx");
        server.stop().await;
    }
}

#[tokio::test]
async fn aliases_follow_if_match_and_keep_their_history() {
    for backend in backends() {
        let server = Server::start(backend).await;
        server.create_model("fraud").await;
        let v1 = server.push("fraud", &[("model.onnx", b"v1")]).await;
        let v2 = server.push("fraud", &[("model.onnx", b"v2")]).await;

        let (status, body) = server.set_alias("fraud", "champion", 9, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "alias to a missing version: {body}");
        let (status, body) = server.set_alias("nobody", "champion", 1, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = server.set_alias("fraud", "bad alias", 1, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        // Create only if absent: If-Match 0.
        let (status, created) = server.set_alias("fraud", "champion", v1, Some("0")).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let etag = created["generation"].as_i64().unwrap();
        let (status, body) = server.set_alias("fraud", "champion", v2, Some("0")).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
        assert!(error_of(&body).contains("stale If-Match"));
        let (status, moved) = server.set_alias("fraud", "champion", v2, Some(&format!("\"{etag}\""))).await;
        assert_eq!(status, StatusCode::OK, "{moved}");
        let (status, body) = server.set_alias("fraud", "champion", v1, Some(&etag.to_string())).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "the old generation is stale now: {body}");
        let (status, body) = server.set_alias("fraud", "champion", v1, Some("soon")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        let response = server.http.get(server.url("/cp/v1/models/fraud/aliases/champion")).send().await.unwrap();
        assert_eq!(response.headers()["etag"], format!("\"{}\"", moved["generation"]));

        // Delete with a stale tag fails, with the current one works; then it is gone.
        let delete = |tag: String| {
            server.http.delete(server.url("/cp/v1/models/fraud/aliases/champion")).header("if-match", tag).send()
        };
        assert_eq!(delete(etag.to_string()).await.unwrap().status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(delete(moved["generation"].to_string()).await.unwrap().status(), StatusCode::NO_CONTENT);
        let (status, _) = server.get("/cp/v1/models/fraud/aliases/champion").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (_, history) = server.get("/cp/v1/models/fraud/history?alias=champion").await;
        let moves: Vec<(Option<i64>, Option<i64>)> = history["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["from_version"].as_i64(), h["to_version"].as_i64()))
            .collect();
        assert_eq!(moves, vec![(None, Some(v1)), (Some(v1), Some(v2)), (Some(v2), None)], "{history}");

        // The event log: one event per change, generations 1.. without gaps.
        let (_, events) = server.get("/cp/v1/events?since=0").await;
        let generations: Vec<i64> =
            events["events"].as_array().unwrap().iter().map(|e| e["generation"].as_i64().unwrap()).collect();
        assert_eq!(generations, (1..=generations.len() as i64).collect::<Vec<_>>());
        assert_eq!(events["generation"].as_i64().unwrap(), generations.len() as i64);
        let kinds: Vec<&str> =
            events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["model_created", "version_created", "version_created", "alias_set", "alias_set", "alias_deleted"]
        );
        let (_, tail) = server.get("/cp/v1/events?since=4").await;
        assert_eq!(tail["events"].as_array().unwrap().len(), 2);
        server.stop().await;
    }
}

#[tokio::test]
async fn of_two_clients_racing_for_one_alias_exactly_one_wins() {
    for backend in backends() {
        let server = Server::start(backend).await;
        server.create_model("fraud").await;
        let v1 = server.push("fraud", &[("model.onnx", b"v1")]).await;
        let (_, first) = server.set_alias("fraud", "champion", v1, None).await;
        let tag = first["generation"].to_string();
        let mut versions = Vec::new();
        for i in 0..8u8 {
            versions.push(server.push("fraud", &[("model.onnx", &[b'r', i])]).await);
        }
        for _round in 0..3 {
            let (_, current) = server.get("/cp/v1/models/fraud/aliases/champion").await;
            let tag = current["generation"].to_string();
            let racers = versions.iter().map(|v| server.set_alias("fraud", "champion", *v, Some(&tag)));
            let statuses: Vec<StatusCode> =
                futures_util::future::join_all(racers).await.into_iter().map(|(s, _)| s).collect();
            let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
            let lost = statuses.iter().filter(|s| **s == StatusCode::PRECONDITION_FAILED).count();
            assert_eq!((won, lost), (1, versions.len() - 1), "{backend:?}: {statuses:?}");
        }
        assert_ne!(tag, "");
        server.stop().await;
    }
}

#[tokio::test]
async fn requests_need_the_token_a_local_host_and_no_origin() {
    let server = Server::start(Backend::Sqlite).await;
    let plain = reqwest::Client::new();
    let url = server.url("/cp/v1/models");
    let (status, body) = answer(plain.get(&url).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = answer(plain.get(&url).bearer_auth("wrong-token-wrong-token").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = answer(server.http.get(&url).header("origin", "http://evil.example").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = answer(server.http.get(&url).header("host", "evil.example").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = answer(server.http.get(&url).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get("/cp/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("no such endpoint"));
    server.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart_and_stale_uploads_are_cleaned() {
    for backend in backends() {
        let server = Server::start(backend).await;
        server.create_model("fraud").await;
        let v = server.push("fraud", &[("model.onnx", b"persisted")]).await;
        server.set_alias("fraud", "champion", v, None).await;
        let data = server.data_dir();
        let (dir, url) = server.stop().await;
        // What a kill -9 during an upload leaves behind.
        std::fs::write(data.join("blobs/tmp/crashed.part"), b"half a blob").unwrap();
        let server = Server::start_at(backend, dir, url).await;
        assert_eq!(temp_files(&server), 0);
        let (status, alias) = server.get("/cp/v1/models/fraud/aliases/champion").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(alias["version"], v);
        let (_, g) = server.get("/cp/v1/generation").await;
        assert_eq!(g["generation"], 3);
        server.stop().await;
    }
}

#[tokio::test]
async fn a_version_number_chosen_by_the_caller_must_be_above_every_existing_one() {
    for backend in backends() {
        let server = Server::start(backend).await;
        server.create_model("fraud").await;
        let store = &server.registry.store;
        let new =
            || NewVersion { source: "modelgate:manifest".into(), creator: "test".into(), ..NewVersion::default() };
        assert_eq!(store.create_version_numbered("fraud", Some(5), new()).await.unwrap().version, 5);
        let refused = store.create_version_numbered("fraud", Some(3), new()).await.unwrap_err();
        assert!(matches!(refused, RegistryError::Conflict(_)), "{backend:?}: {refused}");
        let refused = store.create_version_numbered("fraud", Some(5), new()).await.unwrap_err();
        assert!(matches!(refused, RegistryError::Conflict(_)), "{backend:?}: {refused}");
        assert_eq!(
            store.create_version("fraud", new()).await.unwrap().version,
            6,
            "{backend:?}: numbers go on from the highest"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_resumed_upload_appends_at_the_held_offset_and_is_refused_elsewhere() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let bytes = b"0123456789".repeat(10);
        let digest = Digest::of(&bytes);
        let url = server.url(&format!("/cp/v1/blobs/{digest}"));
        let put = |range: &str, part: &[u8]| {
            server.http.put(&url).header("content-range", range.to_owned()).body(part.to_vec()).send()
        };
        // The first 40 bytes as a range of their own: kept, 202, Upload-Offset says so.
        let first = put("bytes 0-39/100", &bytes[..40]).await.unwrap();
        assert_eq!(first.status(), StatusCode::ACCEPTED);
        assert_eq!(first.headers()["upload-offset"], "40");
        let (status, held) = server.get(&format!("/cp/v1/uploads/{digest}")).await;
        assert_eq!((status, held["received"].as_u64()), (StatusCode::OK, Some(40)));

        let (status, body) = answer(put("bytes 50-99/100", &bytes[50..]).await.unwrap()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{backend:?}: {body}");
        assert!(error_of(&body).contains("resume at 40"), "{body}");
        for bad in ["bytes 40-98/100", "40-99/100", "bytes 40-99/99", "bytes x-99/100"] {
            let (status, body) = answer(put(bad, &bytes[40..]).await.unwrap()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
        let (status, body) = answer(put("bytes 40-99/100", &bytes[40..]).await.unwrap()).await;
        assert_eq!(status, StatusCode::CREATED, "{backend:?}: {body}");
        assert_eq!(server.http.get(&url).send().await.unwrap().bytes().await.unwrap(), bytes);
        let (_, held) = server.get(&format!("/cp/v1/uploads/{digest}")).await;
        assert_eq!(held["complete"], true);
        server.stop().await;
    }
}

#[tokio::test]
async fn only_the_health_paths_answer_without_the_token() {
    for backend in backends() {
        let server = Server::start(backend).await;
        let anonymous = reqwest::Client::new();
        let (status, live) = answer(anonymous.get(server.url("/cp/v1/health/live")).send().await.unwrap()).await;
        assert_eq!((status, &live), (StatusCode::OK, &json!({ "live": true })), "{backend:?}");
        let (status, ready) = answer(anonymous.get(server.url("/cp/v1/health/ready")).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {ready}");
        assert_eq!(ready["ready"], true);
        assert!(ready["generation"].is_i64(), "{ready}");
        let mlflow = anonymous.get(server.url("/health")).send().await.unwrap();
        assert_eq!(mlflow.status(), StatusCode::OK);
        assert_eq!(mlflow.text().await.unwrap(), "OK", "as the MLflow tracking server answers");
        for path in
            ["/cp/v1/generation", "/cp/v1/health", "/cp/v1/health/other", "/api/2.0/mlflow/registered-models/search"]
        {
            let status = anonymous.get(server.url(path)).send().await.unwrap().status();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{backend:?} {path}");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn readiness_is_a_503_with_the_reason_once_the_database_cannot_answer() {
    for backend in backends() {
        let server = Server::start(backend).await;
        server.registry.store.close().await;
        let (status, body) = server.get("/cp/v1/health/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{backend:?}: {body}");
        assert!(error_of(&body).contains("database"), "{body}");
        let (status, _) = server.get("/cp/v1/health/live").await;
        assert_eq!(status, StatusCode::OK, "liveness does not depend on the database");
        server.stop().await;
    }
}
