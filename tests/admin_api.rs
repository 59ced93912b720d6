//! The admin API over a real socket: authentication on every route, checked
//! inputs with clear errors, an operator driving a rollout, per-version load
//! and unload, and the `modelgate admin` CLI.

mod support_routing;

use http::{Method, StatusCode};
use modelgate::admin::api::ENDPOINTS;
use serde_json::{Value, json};
use support_routing::{Http, Kind, Repo, Server, TOKEN, route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_refuses_a_missing_or_wrong_token_browsers_and_foreign_hosts() {
    let repo = Repo::new("m", &[(1, Kind::Mlp)]);
    let server = Server::start(&repo, vec![]).await;
    let http = Http::default();
    let paths = ENDPOINTS.iter().map(|(m, p)| (*m, p.to_string())).chain([("GET", "/not/an/endpoint".to_owned())]);
    for (method, path) in paths {
        let method: Method = method.parse().unwrap();
        let url_for = |path: &str| format!("http://{}{path}", server.admin);
        let url = url_for(&path);
        let none = http.send(method.clone(), url.clone(), &[], None).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{method} {path}: {none:?}");
        assert!(none.body["error"].as_str().unwrap().contains("bearer"), "{none:?}");
        let wrong =
            http.send(method.clone(), url.clone(), &[("authorization", "Bearer not-the-admin-token")], None).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let auth = format!("Bearer {TOKEN}");
        let browser =
            http.send(method.clone(), url, &[("authorization", &auth), ("origin", "http://evil.example")], None).await;
        assert_eq!(browser.status, StatusCode::FORBIDDEN, "{method} {path}");
        // A page that rebinds its own name to this address still sends that name.
        let rebound = http
            .send(method.clone(), url_for(&path), &[("authorization", &auth), ("host", "evil.example")], None)
            .await;
        assert_eq!(rebound.status, StatusCode::FORBIDDEN, "{method} {path}: {rebound:?}");
    }
    // Nothing changed: no route was created by any refused request.
    assert!(server.gateway.rollouts.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_page_loads_without_the_token_and_calls_the_api_from_its_own_origin_only() {
    let repo = Repo::new("m", &[(1, Kind::Mlp)]);
    let spec = route("model = \"m\"\ntargets = [{ version = 1, weight = 100 }]");
    let server = Server::start(&repo, vec![spec]).await;
    let http = Http::default();
    let page = http.send(Method::GET, format!("http://{}/admin/ui/", server.admin), &[], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.as_str().unwrap().contains("<title>modelgate operations</title>"), "{page:?}");
    let redirect = http.send(Method::GET, format!("http://{}/admin/", server.admin), &[], None).await;
    assert_eq!(redirect.status, StatusCode::PERMANENT_REDIRECT);
    // The page's files need the same Host as the API.
    let ops_js = format!("http://{}/admin/ui/ops.js", server.admin);
    let rebound = http.send(Method::GET, ops_js, &[("host", "evil.example")], None).await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    // The page's own writes carry its origin; they pass with the token, and only with it.
    let url = format!("http://{}/admin/v1/routes/m/weights", server.admin);
    let own = format!("http://{}", server.admin);
    let body = Some(json!({ "weights": [{ "version": 1, "weight": 100 }] }).to_string());
    let auth = format!("Bearer {TOKEN}");
    let with_token =
        http.send(Method::PUT, url.clone(), &[("authorization", &auth), ("origin", &own)], body.clone()).await;
    assert_eq!(with_token.status, StatusCode::OK, "{with_token:?}");
    let without = http.send(Method::PUT, url.clone(), &[("origin", &own)], body.clone()).await;
    assert_eq!(without.status, StatusCode::UNAUTHORIZED);
    let foreign = [("authorization", auth.as_str()), ("origin", "http://evil.example")];
    assert_eq!(http.send(Method::PUT, url, &foreign, body).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_get_clear_errors() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    repo.add("n", &[(1, Kind::Mlp), (2, Kind::Mlp)], true);
    let spec = route("model = \"m\"\ntargets = [{ version = 1, weight = 100 }, { version = 2, weight = 0 }]");
    let server = Server::start(&repo, vec![spec]).await;
    let http = Http::default();
    let weights =
        |a: u32, b: u32| Some(json!({ "weights": [{ "version": 1, "weight": a }, { "version": 2, "weight": b }] }));
    let cases: Vec<(Method, &str, Option<Value>, StatusCode, &str)> = vec![
        // This gateway follows no control plane: the registry reads say so; a key a read does
        // not take is refused before that.
        (
            Method::GET,
            "/admin/v1/registry/models/m/drift",
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            "follows no control plane",
        ),
        (Method::GET, "/admin/v1/registry/models/m/drift?limit=5", None, StatusCode::BAD_REQUEST, "takes history"),
        (Method::PUT, "/admin/v1/routes/m/weights", weights(60, 30), StatusCode::BAD_REQUEST, "sum to 100"),
        (
            Method::PUT,
            "/admin/v1/routes/m/weights",
            Some(json!({ "weights": [{ "version": 1, "weight": 100 }] })),
            StatusCode::BAD_REQUEST,
            "missing",
        ),
        (
            Method::PUT,
            "/admin/v1/routes/m/weights",
            Some(json!({ "weights": [{ "version": 1, "weight": 50 }, { "version": 7, "weight": 50 }] })),
            StatusCode::BAD_REQUEST,
            "not a target",
        ),
        (
            Method::PUT,
            "/admin/v1/routes/m/weights",
            Some(json!({ "weight": 1 })),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (Method::PUT, "/admin/v1/routes/m/weights", None, StatusCode::BAD_REQUEST, "needs a JSON body"),
        (Method::PUT, "/admin/v1/routes/zz/weights", weights(50, 50), StatusCode::NOT_FOUND, "no route"),
        (Method::POST, "/admin/v1/routes/m/promote", None, StatusCode::BAD_REQUEST, "has no rollout"),
        (Method::GET, "/admin/v1/routes/m/promote", None, StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        (
            Method::PUT,
            "/admin/v1/routes/m",
            Some(json!({ "model": "other", "targets": [{ "version": 1, "weight": 100 }] })),
            StatusCode::BAD_REQUEST,
            "the path",
        ),
        (
            Method::PUT,
            "/admin/v1/routes/m",
            Some(json!({ "targets": [{ "version": 1, "weight": 100 }, { "version": 2 }], "rollout": { "canary": 2 } })),
            StatusCode::BAD_REQUEST,
            "leave them out",
        ),
        // Version 1 of n is on disk but not loaded: its policy serves the latest version only.
        (
            Method::PUT,
            "/admin/v1/routes/n",
            Some(json!({ "targets": [{ "version": 1, "weight": 50 }, { "version": 2, "weight": 50 }] })),
            StatusCode::BAD_REQUEST,
            "not ready",
        ),
        (Method::POST, "/admin/v1/models/m/versions/9/load", None, StatusCode::NOT_FOUND, "no version directory 9"),
        (
            Method::POST,
            "/admin/v1/models/m/versions/1/unload",
            None,
            StatusCode::BAD_REQUEST,
            "gets traffic from its route",
        ),
        (Method::GET, "/admin/v1/routes/..", None, StatusCode::BAD_REQUEST, "invalid model name"),
    ];
    for (method, path, body, status, needle) in cases {
        let reply = http.admin(&server, method.clone(), path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        let message = reply.body["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{method} {path}: {message:?} lacks {needle:?}");
    }
    // A body that is not JSON.
    let url = format!("http://{}/admin/v1/routes/m/weights", server.admin);
    let reply = http
        .send(Method::PUT, url, &[("authorization", &format!("Bearer {TOKEN}")), ("content-type", "text/plain")], None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "an empty body is not JSON either: {reply:?}");
    let status = server.gateway.rollouts.status("m").await.unwrap();
    assert_eq!((status.targets[0].weight, status.targets[1].weight), (100, 0), "refused changes changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_refused_with_415() {
    let repo = Repo::new("m", &[(1, Kind::Mlp)]);
    let server = Server::start(&repo, vec![]).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = http::Request::put(format!("http://{}/admin/v1/routes/m", server.admin))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"targets = []")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drives_a_rollout_through_the_api() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let server = Server::start(&repo, vec![]).await;
    let http = Http::default();
    let spec = json!({
        "targets": [{ "version": 1 }, { "version": 2 }],
        "rollout": { "canary": 2, "step_weights": [10, 50, 100], "interval": "1h" }
    });
    let put = http.admin(&server, Method::PUT, "/admin/v1/routes/m", Some(spec)).await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    assert_eq!(put.body["rollout"]["state"], "progressing");
    assert_eq!(put.body["targets"][1]["weight"], 10);
    assert_eq!(put.body["spec"]["rollout"]["interval"], "1h");

    let step = |path: &'static str| {
        let (http, server) = (http.clone(), &server);
        async move { http.admin(server, Method::POST, &format!("/admin/v1/routes/m/{path}"), None).await }
    };
    assert_eq!(step("pause").await.body["rollout"]["state"], "paused");
    let weights = json!({ "weights": [{ "version": 1, "weight": 75 }, { "version": 2, "weight": 25 }] });
    let set = http.admin(&server, Method::PUT, "/admin/v1/routes/m/weights", Some(weights)).await;
    assert_eq!(
        (set.body["targets"][1]["weight"].clone(), set.body["rollout"]["state"].clone()),
        (json!(25), json!("paused"))
    );
    let resumed = step("resume").await;
    assert_eq!(
        (resumed.body["rollout"]["state"].clone(), resumed.body["targets"][1]["weight"].clone()),
        (json!("progressing"), json!(10))
    );
    let rolled = step("rollback").await;
    assert_eq!(rolled.body["rollout"]["state"], "failed");
    assert_eq!(rolled.body["targets"][1]["failed"], true);
    assert_eq!(step("resume").await.status, StatusCode::BAD_REQUEST, "a finished rollout does not resume");
    let promoted = step("promote").await;
    assert_eq!(
        (promoted.body["rollout"]["state"].clone(), promoted.body["targets"][1]["weight"].clone()),
        (json!("succeeded"), json!(100))
    );
    let kinds: Vec<String> = promoted.body["rollout"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["started", "paused", "weights", "paused", "resumed", "rolled_back", "promoted"]);
    assert_eq!(http.infer(&server, "m", &[], 1).await.version(), Some(2));

    let listed = http.admin(&server, Method::GET, "/admin/v1/routes", None).await;
    assert_eq!(listed.body["routes"].as_array().unwrap().len(), 1);
    let deleted = http.admin(&server, Method::DELETE, "/admin/v1/routes/m", None).await;
    assert_eq!(deleted.body, json!({ "deleted": "m" }));
    assert_eq!(http.admin(&server, Method::GET, "/admin/v1/routes/m", None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_version_loads_beside_the_policys_and_unloads_once_unrouted() {
    let repo = Repo::new("other", &[(1, Kind::Mlp)]);
    // The policy serves the latest version only: 3. Version 2 is the canary to load by hand.
    repo.add("m", &[(2, Kind::Mlp), (3, Kind::Mlp)], true);
    let server = Server::start(&repo, vec![]).await;
    let http = Http::default();
    let state = |reply: &support_routing::Reply| reply.body["state"].as_str().unwrap_or_default().to_owned();
    let loaded = http.admin(&server, Method::POST, "/admin/v1/models/m/versions/2/load", None).await;
    assert_eq!((loaded.status, state(&loaded)), (StatusCode::OK, "READY".to_owned()), "{loaded:?}");
    let spec = json!({ "targets": [{ "version": 3, "weight": 50 }, { "version": 2, "weight": 50 }] });
    assert_eq!(http.admin(&server, Method::PUT, "/admin/v1/routes/m", Some(spec)).await.status, StatusCode::OK);
    // A model reload keeps the hand-loaded version.
    server.gateway.repository.load("m").await.unwrap();
    assert!(server.gateway.repository.resolve("m", Some(2)).is_ok());
    let refused = http.admin(&server, Method::POST, "/admin/v1/models/m/versions/2/unload", None).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let weights = json!({ "weights": [{ "version": 3, "weight": 100 }, { "version": 2, "weight": 0 }] });
    assert_eq!(
        http.admin(&server, Method::PUT, "/admin/v1/routes/m/weights", Some(weights)).await.status,
        StatusCode::OK
    );
    let unloaded = http.admin(&server, Method::POST, "/admin/v1/models/m/versions/2/unload", None).await;
    assert_eq!((unloaded.status, state(&unloaded)), (StatusCode::OK, "UNAVAILABLE".to_owned()));
    for seed in 0..20 {
        assert_eq!(http.infer(&server, "m", &[], seed).await.version(), Some(3));
    }
    let index = http.admin(&server, Method::GET, "/admin/v1/models", None).await;
    assert!(index.body.as_array().unwrap().iter().any(|row| row["name"] == "m" && row["version"] == "2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_calls_the_admin_api() {
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let spec = route("model = \"m\"\ntargets = [{ version = 1, weight = 100 }, { version = 2, weight = 0 }]");
    let server = Server::start(&repo, vec![spec]).await;
    let run = |args: Vec<String>| {
        let address = server.admin.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
                .arg("admin")
                .arg("--address")
                .arg(address)
                .args(args)
                .env("MODELGATE_ADMIN_TOKEN", TOKEN)
                .env("RUST_LOG", "off")
                .output()
                .unwrap()
        })
    };
    let out = run(vec!["set-weights".into(), "m".into(), "1=40".into(), "2=60".into()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["targets"][1]["weight"], 60);
    let bad = run(vec!["set-weights".into(), "m".into(), "1=40".into()]).await.unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing"), "{}", String::from_utf8_lossy(&bad.stderr));
    let out = run(vec!["routes".into()]).await.unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["routes"][0]["model"], "m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_api_refuses_to_unload_a_routed_model_as_the_admin_api_does() {
    // Issue #15, finding 7: the unauthenticated repository API unloaded what a route serves.
    let repo = Repo::new("m", &[(1, Kind::Mlp), (2, Kind::Mlp)]);
    let server = Server::start(
        &repo,
        vec![support_routing::route(
            "model = \"m\"\ntargets = [{ version = 1, weight = 50 }, { version = 2, weight = 50 }]",
        )],
    )
    .await;
    let http = Http::default();
    let unload = format!("http://{}/v2/repository/models/m/unload", server.http);
    let refused = http.send(Method::POST, unload.clone(), &[], None).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(refused.body["error"].as_str().unwrap().contains("has a route"), "{refused:?}");
    for seed in 0..10 {
        assert!(http.infer(&server, "m", &[], seed).await.version().is_some(), "the routed model still serves");
    }
    // Without a route, it unloads.
    assert_eq!(http.admin(&server, Method::DELETE, "/admin/v1/routes/m", None).await.status, StatusCode::OK);
    assert_eq!(http.send(Method::POST, unload, &[], None).await.status, StatusCode::OK);
}
