//! RS256 / ES256 tokens verified with a PEM public key (docs/PROTOCOL.md §3.2): the algorithm is
//! pinned by the key, so a token signed any other way is refused.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;
use tickstream::clock::unix_now;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sign(alg: Algorithm, key: &EncodingKey) -> String {
    let claims = json!({"sub": "k", "channels": ["*"], "exp": unix_now() + 600});
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

async fn check(public: &str, good: String, others: Vec<(&str, String)>) {
    let mut cfg = config(None);
    cfg.auth.jwt_secret = None;
    cfg.auth.jwt_public_key = Some(fixture(public));
    let app = TestApp::start(cfg).await;
    let mut ws = app.ws("/ws/k.c", &good).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    for (name, t) in others {
        let (status, body) = app
            .try_ws("/ws/k.c", &[("authorization", format!("Bearer {t}"))])
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} must be refused"));
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_token")), "{name}");
    }
    app.stop().await;
}

fn keys() -> (EncodingKey, EncodingKey, EncodingKey) {
    let es = EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-private.pem")).unwrap()).unwrap();
    let rs = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap()).unwrap();
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    (es, rs, hs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_public_key() {
    let (es, rs, hs) = keys();
    check(
        "es256-public.pem",
        sign(Algorithm::ES256, &es),
        vec![
            ("RS256", sign(Algorithm::RS256, &rs)),
            ("HS256", sign(Algorithm::HS256, &hs)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_public_key() {
    let (es, rs, hs) = keys();
    check(
        "rs256-public.pem",
        sign(Algorithm::RS256, &rs),
        vec![
            ("ES256", sign(Algorithm::ES256, &es)),
            ("HS256", sign(Algorithm::HS256, &hs)),
            ("RS512", sign(Algorithm::RS512, &rs)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_key_stops_start_up_naming_the_variable() {
    let mut cfg = config(None);
    cfg.auth.jwt_public_key = Some(fixture("missing.pem"));
    let err = tickstream::Server::bind(cfg).await.err().expect("refused");
    assert!(err.to_string().starts_with("TICKSTREAM_JWT_PUBLIC_KEY"), "{err}");
    let mut cfg = config(None);
    cfg.auth.jwt_public_key = Some(fixture("README.md"));
    let err = tickstream::Server::bind(cfg).await.err().expect("refused");
    assert!(err.to_string().starts_with("TICKSTREAM_JWT_PUBLIC_KEY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_and_issuer_are_checked_when_configured() {
    let mut cfg = config(None);
    cfg.auth.jwt_audience = Some("tickstream".into());
    cfg.auth.jwt_issuer = Some("https://auth.example".into());
    let app = TestApp::start(cfg).await;
    let with = |extra: serde_json::Value| {
        let mut claims = json!({"sub": "k", "channels": ["*"]});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        token_with(claims)
    };
    let good = with(json!({"aud": "tickstream", "iss": "https://auth.example"}));
    assert_eq!(app.get("/api/v1/channels", Some(&good)).await.0, 200);
    let in_a_list = with(json!({"aud": ["other", "tickstream"], "iss": "https://auth.example"}));
    assert_eq!(app.get("/api/v1/channels", Some(&in_a_list)).await.0, 200);
    for (name, t) in [
        (
            "wrong audience",
            with(json!({"aud": "other", "iss": "https://auth.example"})),
        ),
        ("no audience", with(json!({"iss": "https://auth.example"}))),
        (
            "wrong issuer",
            with(json!({"aud": "tickstream", "iss": "https://evil.example"})),
        ),
        ("no issuer", with(json!({"aud": "tickstream"}))),
    ] {
        let (status, body) = app.get("/api/v1/channels", Some(&t)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{name}: {body}"
        );
    }
    app.stop().await;

    // Without them configured, tokens with any (or no) aud/iss are accepted as before.
    let app = TestApp::start(config(None)).await;
    let any = with(json!({"aud": "whatever", "iss": "anyone"}));
    assert_eq!(app.get("/api/v1/channels", Some(&any)).await.0, 200);
    app.stop().await;
}
