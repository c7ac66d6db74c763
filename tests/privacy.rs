//! Nothing secret in the shared store (invariant 10): after requests whose cookies, bearer
//! tokens and keyed headers select variants, no stored byte (entries, variants records, sets,
//! key names) holds any of those values. Real Envoy, Webdis and Redis.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{Stack, StackOptions};

const MARKERS: [&str; 3] = ["SECRETcookie7f3a", "SECRETtoken91bd", "SECRETtenant4c2e"];

/// Every key of the stack's namespace and every byte stored under it (strings whole, sets
/// member by member).
fn everything_stored(st: &Stack) -> Vec<u8> {
    let mut all = Vec::new();
    for key in st.all_keys() {
        all.extend_from_slice(key.as_bytes());
        match st.redis_cli(&["TYPE", &key]).as_str() {
            "string" => all.extend(st.redis_cli_bytes(&["GET", &key])),
            "set" => all.extend(st.redis_cli_bytes(&["SMEMBERS", &key])),
            other => panic!("{key} is a {other}"),
        }
    }
    all
}

#[test]
fn no_request_secret_reaches_the_store() {
    let st = Stack::start(StackOptions::with_config(json!({
        "key": {"headers": ["x-tenant"]}
    })));
    let cases = [
        ("/by-cookie?cc=public%2C%20max-age%3D60&vary=Cookie", "u1"),
        ("/by-cookie?cc=public%2C%20max-age%3D60&vary=Cookie", "u2"),
        // A request with `Authorization` is stored only for a `public` (or s-maxage) response.
        (
            "/by-token?cc=public%2C%20max-age%3D60&vary=Authorization",
            "u1",
        ),
        (
            "/by-both?cc=public%2C%20max-age%3D60&vary=Cookie%2C%20Authorization",
            "u3",
        ),
    ];
    let headers = |user: &str| {
        [
            ("cookie", format!("session={}-{user}", MARKERS[0])),
            ("authorization", format!("Bearer {}-{user}", MARKERS[1])),
            ("x-tenant", format!("{}-{user}", MARKERS[2])),
        ]
    };
    for (path, user) in cases {
        let h = headers(user);
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let miss = st.get(path, &h);
        assert_eq!(miss.status, 200);
        let cs = miss.header("cache-status").unwrap_or_default().to_string();
        assert!(cs.contains("stored"), "{path} {user}: {cs}");
        // Written: the same request becomes a hit (its own variant).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let again = st.get(path, &h);
            if again
                .header("cache-status")
                .is_some_and(|c| c.contains("hit"))
            {
                assert_eq!(again.body, miss.body, "{path} {user}");
                break;
            }
            assert!(Instant::now() < deadline, "{path} {user} never a hit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let stored = everything_stored(&st);
    assert!(stored.len() > 200, "nothing stored to scan");
    for marker in MARKERS {
        assert!(
            !stored.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{marker} found in the store"
        );
    }
}
