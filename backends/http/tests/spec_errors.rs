//! A broken description names the setting to fix.

use postfix_adapter_backend_http::{ClientSettings, HttpBackend, HttpSpec};

fn build(toml_text: &str) -> Result<HttpBackend, String> {
    let mut file: toml::Table = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    let spec: HttpSpec = file
        .remove("http")
        .ok_or("no [http]")?
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    let env = |name: &str| (name == "BASE").then(|| "http://api.example".to_owned());
    HttpBackend::new(&spec, &env, &ClientSettings::default(), None).map_err(|e| e.to_string())
}

#[test]
fn a_working_description_builds() {
    build(
        r#"
        [http.mailbox]
        url = "${BASE}/mailbox/{key}"
        answer = { kind = "found" }
        not_found = [{ status = 404 }]
        [http.alias]
        url = "${BASE}/alias?address={key}"
        answer = { pointer = "/goto", separator = "," }
        "#,
    )
    .unwrap();
}

#[test]
fn each_mistake_names_its_setting() {
    for (toml_text, setting) in [
        ("[http]\n", "http: describes no question"),
        (
            "[http.domain]\nurl = \"${NOPE}/d/{key}\"\n",
            "http.domain.url: `${NOPE}`: neither NOPE nor NOPE_FILE is set",
        ),
        (
            "[http.domain]\nurl = \"ftp://h/{key}\"\n",
            "http.domain.url: must be an http:// or https:// URL",
        ),
        (
            "[http.domain]\nurl = \"${BASE}/{key}\"\nanswer = { pointer = \"flag\" }\n",
            "http.domain.answer.pointer",
        ),
        (
            "[http.domain]\nurl = \"${BASE}/{key}\"\nanswer = { kind = \"list\" }\n",
            "http.domain.answer.kind",
        ),
        (
            "[http.alias]\nurl = \"${BASE}/{key}\"\nnot_found = [{ status = 404, body = \"{oops\" }]\n",
            "http.alias.not_found[0].body: not JSON",
        ),
        (
            "[http.auth]\nurl = \"${BASE}/auth\"\nbody = '{\"u\": \"{key}\"}'\nsuccess = { pointer = \"/ok\", equals = true }\nrefused = { reason = \"/m\" }\n",
            "http.auth.body: not JSON once filled in",
        ),
        (
            "[http.auth]\nurl = \"${BASE}/auth\"\nsuccess = { pointer = \"/ok\" }\n",
            "http.auth.success: pointer and equals go together",
        ),
        (
            "[http]\nheaders = { \"Bad Name\" = \"x\" }\n[http.domain]\nurl = \"${BASE}/{key}\"\n",
            "http.domain.headers.Bad Name: not a valid header name",
        ),
        (
            "[http.domain]\nurl = \"${BASE}/{key}\"\nkey_pattern = \"(\"\n",
            "http.domain.key_pattern: not a regular expression",
        ),
        (
            "[http.domain]\nurl = \"${BASE}/{key}\"\nkey_pattern = \"a)|(.*\"\n",
            "http.domain.key_pattern: not a regular expression",
        ),
        (
            "[http.alias]\nurl = \"${BASE}/{key}\"\nanswer = { separator = \"\" }\n",
            "http.alias.answer.separator: is empty",
        ),
        (
            "[http.auth]\nurl = \"${BASE}/auth\"\nrefused = { reason = \"/m\" }\n",
            "http.auth.success: needs pointer and equals",
        ),
        (
            "[http.auth]\nurl = \"${BASE}/auth\"\nsuccess = { pointer = \"/ok\", equals = true }\n",
            "http.auth.refused: shares statuses with unauthorized",
        ),
    ] {
        let err = build(toml_text).expect_err(toml_text);
        assert!(err.starts_with(setting), "{toml_text}\n=> {err}");
    }
    // Unknown keys are refused by name too (a typo must not be silently ignored).
    let err = build("[http.domain]\nurl = \"${BASE}/{key}\"\nanwser = {}\n").unwrap_err();
    assert!(err.contains("anwser"), "{err}");
}
