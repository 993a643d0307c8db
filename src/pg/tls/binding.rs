//! `tls-server-end-point` channel binding (RFC 5929): the data SCRAM-SHA-256-PLUS binds the
//! authentication to, so a man in the middle with another certificate cannot relay it.

/// The `tls-server-end-point` channel-binding data (RFC 5929) for a server certificate: its
/// hash with the certificate's signature hash, SHA-256 standing in for MD5 and SHA-1. `None`
/// for signature algorithms without a defined hash (RSA-PSS, EdDSA), which then go unbound.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, .. }, .. }
    let (cert, _) = der_take(cert_der, 0x30)?;
    let (_tbs, rest) = der_take(cert, 0x30)?;
    let (alg, _) = der_take(rest, 0x30)?;
    let (oid, _) = der_take(alg, 0x06)?;
    let algorithm = match oid {
        [prefix @ .., last] if prefix == RSA => match last {
            4 | 5 | 11 => &digest::SHA256,
            12 => &digest::SHA384,
            13 => &digest::SHA512,
            _ => return None,
        },
        _ if oid == ECDSA_SHA1 => &digest::SHA256,
        [prefix @ .., last] if prefix == ECDSA_SHA2 => match last {
            2 => &digest::SHA256,
            3 => &digest::SHA384,
            4 => &digest::SHA512,
            _ => return None,
        },
        _ => return None,
    };
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// Splits one DER element with the given tag off the front: (contents, rest).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, input) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let (bytes, rest) = input.split_at(n);
        input = rest;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (input.len() >= len).then(|| input.split_at(len))
}

pub(super) fn end_point_of(conn: &rustls::ClientConnection) -> Option<Vec<u8>> {
    tls_server_end_point(conn.peer_certificates()?.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_take_reads_short_and_long_lengths() {
        assert_eq!(
            der_take(&[0x30, 2, 1, 2, 9], 0x30),
            Some((&[1, 2][..], &[9][..]))
        );
        let mut long = vec![0x04, 0x81, 200];
        long.extend(std::iter::repeat_n(7, 200));
        let (body, rest) = der_take(&long, 0x04).unwrap();
        assert_eq!(body.len(), 200);
        assert!(rest.is_empty());
        assert_eq!(der_take(&[0x30, 5, 1], 0x30), None, "truncated");
        assert_eq!(der_take(&[0x31, 0], 0x30), None, "wrong tag");
    }

    #[test]
    fn end_point_hash_of_garbage_is_none() {
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}
