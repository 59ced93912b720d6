//! Every route the API registers is documented in api/control-plane.openapi.yaml.
#![allow(clippy::unwrap_used, missing_docs)]

#[test]
fn every_route_is_in_the_openapi_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = std::fs::read_to_string(root.join("../../api/control-plane.openapi.yaml")).unwrap();
    let mut routes = Vec::new();
    for file in ["native.rs", "mlflow.rs", "artifacts.rs", "sync.rs", "drift.rs", "feedback.rs", "health.rs"] {
        let source = std::fs::read_to_string(root.join("src/api").join(file)).unwrap();
        for piece in source.split(".route(").skip(1) {
            let literal = piece.split('"').nth(1).unwrap();
            routes.push(literal.replace("{P}", "/api/2.0/mlflow").replace("{*path}", "{path}"));
        }
    }
    assert!(routes.len() >= 30, "{routes:?}");
    for route in routes {
        assert!(spec.contains(&format!("  {route}:")), "{route} is not in api/control-plane.openapi.yaml");
    }
}
