//! One webhook request of a subscription (SPEC §4): method, body and every header.

use reqwest::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};

use super::signing;
use crate::config::{Auth, Method, SubscriptionConfig, Target};

/// `User-Agent` of every webhook request.
pub const USER_AGENT_VALUE: &str = concat!("walhook/", env!("CARGO_PKG_VERSION"));

/// The URL and method a request goes to: the event's stored `target` when it has one (the
/// stored method is authoritative, whatever the config says now), else the subscription's.
/// Capture stores a target for every event of a subscription with a method map, so an event
/// without one under a map was stored before the map was configured (a reload); it goes with
/// the map's `create` method, the operation is not known here.
pub fn destination<'a>(
    sub: &'a SubscriptionConfig,
    target: Option<&'a Target>,
) -> (&'a str, Method) {
    match target {
        Some(target) => (target.url.as_str(), target.method),
        None => (
            sub.url.expose(),
            sub.method
                .single()
                .unwrap_or_else(|| sub.method.for_operation(crate::config::Operation::Create)),
        ),
    }
}

/// A request to the event's `target` (or `sub`'s URL and method) carrying `body` as event
/// (or batch) `id` with `sub`'s `Content-Type`, signed for the attempt made at `timestamp`
/// (unix seconds).
///
/// A GET carries no body and is signed over an empty one. Credentials (auth and custom header
/// values) are marked sensitive so that nothing that prints headers shows them. An invalid
/// header value surfaces as an error when the request is built or sent.
pub fn build(
    client: &reqwest::Client,
    sub: &SubscriptionConfig,
    target: Option<&Target>,
    id: &str,
    body: &[u8],
    timestamp: i64,
) -> reqwest::RequestBuilder {
    let (url, method) = destination(sub, target);
    let (mut request, signed_body) = match method {
        Method::Get => (client.get(url), &b""[..]),
        method => (
            client
                .request(http_method(method), url)
                .header(CONTENT_TYPE, sub.content_type.as_str())
                .body(body.to_vec()),
            body,
        ),
    };
    request = request
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("Idempotency-Key", id)
        .header(USER_AGENT, USER_AGENT_VALUE);
    if let Some(signature) = signing::signature_header(&sub.secrets, id, timestamp, signed_body) {
        request = request.header("webhook-signature", signature);
    }
    request = match &sub.auth {
        None => request,
        // Both helpers mark the Authorization value sensitive.
        Some(Auth::Bearer { token }) => request.bearer_auth(token.expose()),
        Some(Auth::Basic { username, password }) => {
            request.basic_auth(username, Some(password.expose()))
        }
        Some(Auth::Header { name, value }) => sensitive(request, name, value.expose()),
    };
    for (name, value) in &sub.headers {
        request = sensitive(request, name, value.expose());
    }
    request
}

fn http_method(method: Method) -> reqwest::Method {
    match method {
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
        Method::Get => reqwest::Method::GET,
    }
}

/// Adds a header whose value is hidden from `Debug` output. An invalid value is handed to
/// the builder as is, so that it reports the error (which never quotes the value).
fn sensitive(request: reqwest::RequestBuilder, name: &str, value: &str) -> reqwest::RequestBuilder {
    match HeaderValue::from_str(value) {
        Ok(mut value) => {
            value.set_sensitive(true);
            request.header(name, value)
        }
        Err(_) => request.header(name, value),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{
        Methods, ObjectConfig, Operation, Ordering, ResolvedObject, Secret, SigningSecret,
        TableName, WebhookUrl,
    };

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "evt_0000000000000001_0000";
    const TS: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_0000000000000001_0000"}"#;

    pub(crate) fn subscription(url: &str) -> SubscriptionConfig {
        SubscriptionConfig {
            name: "s".into(),
            object: ResolvedObject {
                name: "invoice".into(),
                config_key: "invoice".into(),
                unnamed: false,
                config: ObjectConfig {
                    name: None,
                    table: "public.invoice".parse::<TableName>().unwrap(),
                    key: None,
                    fields: None,
                    keep_state: false,
                    children: Vec::new(),
                },
            },
            operations: Operation::ALL.to_vec(),
            truncate: false,
            watch: None,
            when: None,
            when_at: String::new(),
            event_type: None,
            url: WebhookUrl::new(url, url),
            url_template: false,
            url_at: String::new(),
            method: Methods::Single(Method::Post),
            content_type: "application/json".into(),
            template: None,
            dead_on_status: Vec::new(),
            secrets: Vec::new(),
            auth: None,
            headers: Vec::new(),
            batch: None,
            rate_limit: None,
            max_in_flight: None,
            ordering: Ordering::Key,
            active: true,
            backfill: false,
            timeout: Duration::from_secs(10),
            retry_schedule: Vec::new(),
        }
    }

    fn built(sub: &SubscriptionConfig) -> reqwest::Request {
        build(&reqwest::Client::new(), sub, None, ID, BODY, TS)
            .build()
            .unwrap()
    }

    fn header<'a>(request: &'a reqwest::Request, name: &str) -> Option<&'a str> {
        request.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn post_carries_the_json_body() {
        let request = built(&subscription("http://example.com/hook"));
        assert_eq!(request.method(), reqwest::Method::POST);
        assert_eq!(request.url().as_str(), "http://example.com/hook");
        assert_eq!(header(&request, "content-type"), Some("application/json"));
        assert_eq!(request.body().unwrap().as_bytes(), Some(BODY));
    }

    #[test]
    fn get_has_no_body_and_is_signed_over_an_empty_one() {
        let mut sub = subscription("http://example.com/hook");
        sub.method = Methods::Single(Method::Get);
        sub.secrets = vec![SigningSecret::parse(SECRET).unwrap()];
        let request = built(&sub);
        assert_eq!(request.method(), reqwest::Method::GET);
        assert!(request.body().is_none());
        assert_eq!(header(&request, "content-type"), None);
        let expected = signing::signature(&sub.secrets[0], ID, TS, b"");
        assert_eq!(
            header(&request, "webhook-signature"),
            Some(expected.as_str())
        );
    }

    #[test]
    fn a_stored_target_decides_url_and_method_and_content_type_is_sent_as_given() {
        let mut sub = subscription("https://api.example.com/orders/{{ key.id }}");
        sub.url_template = true;
        sub.method = Methods::PerOperation {
            create: Some(Method::Post),
            update: Some(Method::Put),
            delete: Some(Method::Delete),
            truncate: None,
        };
        sub.content_type = "application/xml; charset=windows-1257".into();
        sub.secrets = vec![SigningSecret::parse(SECRET).unwrap()];
        for (method, expected) in [
            (Method::Put, reqwest::Method::PUT),
            (Method::Delete, reqwest::Method::DELETE),
            (Method::Patch, reqwest::Method::PATCH),
        ] {
            let target = Target {
                url: "https://api.example.com/orders/7".into(),
                method,
            };
            let request = build(&reqwest::Client::new(), &sub, Some(&target), ID, BODY, TS)
                .build()
                .unwrap();
            assert_eq!(request.method(), expected);
            assert_eq!(request.url().as_str(), "https://api.example.com/orders/7");
            assert_eq!(
                header(&request, "content-type"),
                Some("application/xml; charset=windows-1257")
            );
            assert_eq!(request.body().unwrap().as_bytes(), Some(BODY));
            let signed = signing::signature(&sub.secrets[0], ID, TS, BODY);
            assert_eq!(header(&request, "webhook-signature"), Some(signed.as_str()));
        }
        let ping = Target {
            url: "https://api.example.com/orders/7".into(),
            method: Method::Get,
        };
        let request = build(&reqwest::Client::new(), &sub, Some(&ping), ID, BODY, TS)
            .build()
            .unwrap();
        assert!(request.body().is_none());
        assert_eq!(header(&request, "content-type"), None);
        let signed = signing::signature(&sub.secrets[0], ID, TS, b"");
        assert_eq!(header(&request, "webhook-signature"), Some(signed.as_str()));
    }

    #[test]
    fn standard_webhooks_headers_idempotency_key_and_user_agent() {
        let request = built(&subscription("http://example.com/hook"));
        assert_eq!(header(&request, "webhook-id"), Some(ID));
        assert_eq!(header(&request, "webhook-timestamp"), Some("1700000000"));
        assert_eq!(header(&request, "idempotency-key"), Some(ID));
        assert_eq!(
            header(&request, "user-agent"),
            Some(concat!("walhook/", env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn no_secret_no_signature() {
        let request = built(&subscription("http://example.com/hook"));
        assert_eq!(header(&request, "webhook-signature"), None);
    }

    #[test]
    fn post_is_signed_over_the_body_with_every_secret() {
        let mut sub = subscription("http://example.com/hook");
        sub.secrets = vec![
            SigningSecret::parse(SECRET).unwrap(),
            SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
        ];
        let request = built(&sub);
        let expected = signing::signature_header(&sub.secrets, ID, TS, BODY).unwrap();
        assert_eq!(
            header(&request, "webhook-signature"),
            Some(expected.as_str())
        );
        assert!(expected.contains(' '));
    }

    #[test]
    fn bearer_auth() {
        let mut sub = subscription("http://example.com/hook");
        sub.auth = Some(Auth::Bearer {
            token: Secret::new("t0k"),
        });
        let request = built(&sub);
        assert_eq!(header(&request, "authorization"), Some("Bearer t0k"));
        assert!(request.headers()["authorization"].is_sensitive());
    }

    #[test]
    fn basic_auth() {
        let mut sub = subscription("http://example.com/hook");
        sub.auth = Some(Auth::Basic {
            username: "user".into(),
            password: Secret::new("pass"),
        });
        let request = built(&sub);
        // base64("user:pass")
        assert_eq!(
            header(&request, "authorization"),
            Some("Basic dXNlcjpwYXNz")
        );
        assert!(request.headers()["authorization"].is_sensitive());
    }

    #[test]
    fn header_auth() {
        let mut sub = subscription("http://example.com/hook");
        sub.auth = Some(Auth::Header {
            name: "X-Api-Key".into(),
            value: Secret::new("k3y"),
        });
        let request = built(&sub);
        assert_eq!(header(&request, "x-api-key"), Some("k3y"));
        assert!(request.headers()["x-api-key"].is_sensitive());
        assert_eq!(header(&request, "authorization"), None);
    }

    #[test]
    fn custom_headers_are_added() {
        let mut sub = subscription("http://example.com/hook");
        sub.headers = vec![
            ("X-Tenant".into(), Secret::new("acme")),
            ("X-Other".into(), Secret::new("1")),
        ];
        let request = built(&sub);
        assert_eq!(header(&request, "x-tenant"), Some("acme"));
        assert_eq!(header(&request, "x-other"), Some("1"));
        assert!(format!("{:?}", request.headers()).contains("Sensitive"));
    }

    #[test]
    fn an_invalid_header_value_is_an_error_that_hides_the_value() {
        let mut sub = subscription("http://example.com/hook");
        sub.headers = vec![("X-Bad".into(), Secret::new("line\nbreak-secret"))];
        let error = build(&reqwest::Client::new(), &sub, None, ID, BODY, TS)
            .build()
            .unwrap_err();
        assert!(!format!("{error:?}").contains("break-secret"));
    }
}
