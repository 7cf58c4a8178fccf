//! Requests as Postfix and its smtpd send them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Appends `payload` as a netstring (`<length>:<payload>,`) to `out`.
pub fn netstring_into(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
}

/// `payload` as a netstring: a socketmap request is `netstring(b"map key")`.
pub fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    netstring_into(payload, &mut out);
    out
}

/// A policy request at END-OF-MESSAGE from the SASL login `login` (also the
/// envelope sender), for one recipient, as smtpd sends it.
pub fn policy_end_of_message(login: &str) -> Vec<u8> {
    format!(
        "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nprotocol_name=ESMTP\n\
         client_address=192.0.2.1\nsender={login}\nrecipient_count=1\nqueue_id=ABC123\n\
         sasl_method=plain\nsasl_username={login}\nsize=100\n\n"
    )
    .into_bytes()
}

/// A Dovecot `AUTH` line for mechanism PLAIN with the initial response, request
/// `id`, from the SMTP client at `rip`, as Postfix's smtpd sends it.
pub fn auth_plain(id: u64, login: &str, password: &str, rip: &str) -> String {
    let resp = STANDARD.encode(format!("\0{login}\0{password}"));
    format!("AUTH\t{id}\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip={rip}\tresp={resp}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_look_as_postfix_sends_them() {
        assert_eq!(netstring(b"domain example.org"), b"18:domain example.org,");
        assert_eq!(netstring(b""), b"0:,");
        let policy = String::from_utf8(policy_end_of_message("user@example.org")).unwrap();
        assert!(policy.starts_with("request=smtpd_access_policy\n"));
        assert!(policy.contains("\nsasl_username=user@example.org\n"));
        assert!(policy.ends_with("\n\n") && !policy.ends_with("\n\n\n"));
        assert_eq!(
            auth_plain(7, "a", "b", "192.0.2.9"),
            "AUTH\t7\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.9\tresp=AGEAYg==\n"
        );
    }
}
