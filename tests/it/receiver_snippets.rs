//! The signature-verification snippets the README gives receivers (`examples/receivers/`)
//! accept the Standard Webhooks test vector and reject a tampered body, run by the real
//! interpreters.

use std::process::Command;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
const TIMESTAMP: &str = "1649367553";
const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
const BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;

fn dir() -> String {
    format!("{}/examples/receivers", env!("CARGO_MANIFEST_DIR"))
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed to check the README's snippet: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_python_snippet_verifies_the_test_vector_and_rejects_a_changed_body() {
    let script = format!(
        "import sys, time; sys.path.insert(0, {dir:?}); import verify\n\
         time.time = lambda: {TIMESTAMP}\n\
         h = {{'webhook-id': {ID:?}, 'webhook-timestamp': {TIMESTAMP:?}, \
               'webhook-signature': 'v2,x ' + {SIGNATURE:?}}}\n\
         b = {BODY:?}.encode()\n\
         print(verify.verify({SECRET:?}, h, b), verify.verify({SECRET:?}, h, b + b' '))",
        dir = dir()
    );
    assert_eq!(run("python3", &["-c", &script]), "True False");
}

#[test]
fn the_node_snippet_verifies_the_test_vector_and_rejects_a_changed_body() {
    let script = format!(
        "const {{ verify }} = await import({path:?});\n\
         Date.now = () => {TIMESTAMP}000;\n\
         const h = {{'webhook-id': {ID:?}, 'webhook-timestamp': {TIMESTAMP:?}, \
                    'webhook-signature': 'v2,x ' + {SIGNATURE:?}}};\n\
         const b = Buffer.from({BODY:?});\n\
         console.log(verify({SECRET:?}, h, b), verify({SECRET:?}, h, Buffer.concat([b, Buffer.from(' ')])));",
        path = format!("{}/verify.mjs", dir())
    );
    assert_eq!(
        run("node", &["--input-type=module", "-e", &script]),
        "true false"
    );
}
