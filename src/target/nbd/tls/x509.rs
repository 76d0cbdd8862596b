//! The subject of a client's certificate, as the name a host is known by.
//!
//! With `--tls-client-ca` a client must present a certificate that CA signed, or the TLS
//! handshake fails; the certificate's subject then names the host, and only it (not the
//! address). The subject is written as OpenSSL prints it with
//! `openssl x509 -noout -subject -nameopt RFC2253` (less the `subject=` prefix): RFC 4514
//! order (the last RDN first), `,` between RDNs and `+` inside one, OpenSSL's short names
//! (`CN`, `O`, `OU`, `C`, `L`, `ST`, `DC`, `UID`, `emailAddress`, …; an unknown type as its
//! dotted OID with its value as `#` and the hex of its DER), `\` before `,+"\<>;`, before a
//! leading space or `#` and a trailing space, and `\XX` for control bytes and every byte of a
//! non-ASCII character in UTF-8 — e.g. `CN=client1,O=sds test`. [`subject_of_certificate`]
//! walks the certificate's DER itself (a few dozen lines, tested against OpenSSL's output)
//! rather than pull in a general X.509 parser.

/// Why a certificate's subject could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubjectError {
    #[error("malformed DER: {0}")]
    Malformed(&'static str),
    #[error("no client certificate")]
    NoCertificate,
}

/// A DER reader over one level of nesting.
struct Der<'a> {
    bytes: &'a [u8],
}

/// One DER element: its tag, its contents and its whole encoding.
struct Element<'a> {
    tag: u8,
    content: &'a [u8],
    encoding: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn next(&mut self) -> Result<Element<'a>, SubjectError> {
        let all = self.bytes;
        let (&tag, rest) = all
            .split_first()
            .ok_or(SubjectError::Malformed("truncated"))?;
        if tag & 0x1f == 0x1f {
            return Err(SubjectError::Malformed("multi-byte tag"));
        }
        let (&first, rest) = rest
            .split_first()
            .ok_or(SubjectError::Malformed("truncated length"))?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err(SubjectError::Malformed("unsupported length"));
            }
            let digits = rest
                .get(..count)
                .ok_or(SubjectError::Malformed("truncated length"))?;
            let length = digits
                .iter()
                .fold(0usize, |length, &digit| (length << 8) | usize::from(digit));
            (length, &rest[count..])
        };
        let content = rest
            .get(..length)
            .ok_or(SubjectError::Malformed("length past the end"))?;
        let header = all.len() - rest.len();
        self.bytes = &rest[length..];
        Ok(Element {
            tag,
            content,
            encoding: &all[..header + length],
        })
    }

    fn take(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], SubjectError> {
        let element = self.next()?;
        if element.tag != tag {
            return Err(SubjectError::Malformed(what));
        }
        Ok(element.content)
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OBJECT_IDENTIFIER: u8 = 0x06;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;

/// The subject of an X.509 certificate (DER), in the form the module doc describes.
pub fn subject_of_certificate(der: &[u8]) -> Result<String, SubjectError> {
    let certificate = Der::new(der).take(SEQUENCE, "certificate is not a SEQUENCE")?;
    let tbs = Der::new(certificate).take(SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let mut fields = Der::new(tbs);
    let mut field = fields.next()?;
    if field.tag == VERSION {
        field = fields.next()?;
    }
    if field.tag != INTEGER {
        return Err(SubjectError::Malformed("no serial number"));
    }
    fields.take(SEQUENCE, "no signature algorithm")?;
    fields.take(SEQUENCE, "no issuer")?;
    fields.take(SEQUENCE, "no validity")?;
    let subject = fields.take(SEQUENCE, "no subject")?;
    format_name(subject)
}

/// OpenSSL's short names for the attribute types it knows (`openssl x509 -nameopt RFC2253`
/// prints these; any other type is printed as its dotted OID).
const ATTRIBUTE_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "street"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "title"),
    ("2.5.4.13", "description"),
    ("2.5.4.14", "searchGuide"),
    ("2.5.4.15", "businessCategory"),
    ("2.5.4.16", "postalAddress"),
    ("2.5.4.17", "postalCode"),
    ("2.5.4.18", "postOfficeBox"),
    ("2.5.4.19", "physicalDeliveryOfficeName"),
    ("2.5.4.20", "telephoneNumber"),
    ("2.5.4.21", "telexNumber"),
    ("2.5.4.22", "teletexTerminalIdentifier"),
    ("2.5.4.23", "facsimileTelephoneNumber"),
    ("2.5.4.24", "x121Address"),
    ("2.5.4.25", "internationaliSDNNumber"),
    ("2.5.4.26", "registeredAddress"),
    ("2.5.4.27", "destinationIndicator"),
    ("2.5.4.28", "preferredDeliveryMethod"),
    ("2.5.4.29", "presentationAddress"),
    ("2.5.4.30", "supportedApplicationContext"),
    ("2.5.4.31", "member"),
    ("2.5.4.32", "owner"),
    ("2.5.4.33", "roleOccupant"),
    ("2.5.4.34", "seeAlso"),
    ("2.5.4.35", "userPassword"),
    ("2.5.4.36", "userCertificate"),
    ("2.5.4.37", "cACertificate"),
    ("2.5.4.38", "authorityRevocationList"),
    ("2.5.4.39", "certificateRevocationList"),
    ("2.5.4.40", "crossCertificatePair"),
    ("2.5.4.41", "name"),
    ("2.5.4.42", "GN"),
    ("2.5.4.43", "initials"),
    ("2.5.4.44", "generationQualifier"),
    ("2.5.4.45", "x500UniqueIdentifier"),
    ("2.5.4.46", "dnQualifier"),
    ("2.5.4.47", "enhancedSearchGuide"),
    ("2.5.4.48", "protocolInformation"),
    ("2.5.4.49", "distinguishedName"),
    ("2.5.4.50", "uniqueMember"),
    ("2.5.4.51", "houseIdentifier"),
    ("2.5.4.52", "supportedAlgorithms"),
    ("2.5.4.53", "deltaRevocationList"),
    ("2.5.4.54", "dmdName"),
    ("2.5.4.65", "pseudonym"),
    ("2.5.4.72", "role"),
    ("2.5.4.97", "organizationIdentifier"),
    ("2.5.4.98", "c3"),
    ("2.5.4.99", "n3"),
    ("2.5.4.100", "dnsName"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
    ("1.2.840.113549.1.9.2", "unstructuredName"),
    ("1.2.840.113549.1.9.8", "unstructuredAddress"),
    ("1.3.6.1.4.1.311.60.2.1.1", "jurisdictionL"),
    ("1.3.6.1.4.1.311.60.2.1.2", "jurisdictionST"),
    ("1.3.6.1.4.1.311.60.2.1.3", "jurisdictionC"),
];

fn dotted_oid(content: &[u8]) -> Result<String, SubjectError> {
    let (&first, rest) = content
        .split_first()
        .ok_or(SubjectError::Malformed("empty OID"))?;
    if first >= 0x80 {
        return Err(SubjectError::Malformed("OID first arcs too large"));
    }
    let (top, second) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut text = format!("{top}.{second}");
    let mut arc: u64 = 0;
    let mut digits = 0;
    for &byte in rest {
        if digits == 9 {
            return Err(SubjectError::Malformed("OID arc too large"));
        }
        arc = (arc << 7) | u64::from(byte & 0x7f);
        digits += 1;
        if byte & 0x80 == 0 {
            text.push_str(&format!(".{arc}"));
            arc = 0;
            digits = 0;
        }
    }
    if digits != 0 {
        return Err(SubjectError::Malformed("OID ends inside an arc"));
    }
    Ok(text)
}

/// An attribute value as UTF-8, the way OpenSSL converts the string types it knows; `None`
/// for a type it dumps as hex.
fn value_utf8(tag: u8, content: &[u8]) -> Result<Option<String>, SubjectError> {
    let text = match tag {
        // UTF8String.
        0x0c => std::str::from_utf8(content)
            .map_err(|_| SubjectError::Malformed("UTF8String is not UTF-8"))?
            .to_string(),
        // Numeric, Printable, T61, Videotex, IA5, UTCTime, GeneralizedTime, Graphic, Visible
        // and General strings: one byte per character, taken as Latin-1.
        0x12..=0x1b => content.iter().map(|&byte| char::from(byte)).collect(),
        // UniversalString: UCS-4, big-endian.
        0x1c => {
            if content.len() % 4 != 0 {
                return Err(SubjectError::Malformed("UniversalString of odd length"));
            }
            content
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Option<String>>()
                .ok_or(SubjectError::Malformed("UniversalString character"))?
        }
        // BMPString: UCS-2, big-endian.
        0x1e => {
            if content.len() % 2 != 0 {
                return Err(SubjectError::Malformed("BMPString of odd length"));
            }
            content
                .chunks_exact(2)
                .map(|c| char::from_u32(u32::from(u16::from_be_bytes([c[0], c[1]]))))
                .collect::<Option<String>>()
                .ok_or(SubjectError::Malformed("BMPString character"))?
        }
        _ => return Ok(None),
    };
    Ok(Some(text))
}

/// Appends `value` escaped as RFC 2253 with OpenSSL's flags: `\` before the specials, a
/// leading space or `#` and a trailing space; `\XX` for controls and non-ASCII bytes.
fn push_escaped(out: &mut String, value: &str) {
    let bytes = value.as_bytes();
    for (index, &byte) in bytes.iter().enumerate() {
        let first = index == 0;
        let last = index + 1 == bytes.len();
        match byte {
            0x00..=0x1f | 0x7f..=0xff => out.push_str(&format!("\\{byte:02X}")),
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            b' ' if first || last => out.push_str("\\ "),
            b'#' if first => out.push_str("\\#"),
            _ => out.push(char::from(byte)),
        }
    }
}

fn push_hex_dump(out: &mut String, encoding: &[u8]) {
    out.push('#');
    for byte in encoding {
        out.push_str(&format!("{byte:02X}"));
    }
}

/// A DER Name (the contents of its SEQUENCE) in the form the module doc describes.
pub fn format_name(name: &[u8]) -> Result<String, SubjectError> {
    struct Attribute<'a> {
        rdn: usize,
        oid: &'a [u8],
        value: Element<'a>,
    }
    let mut attributes = Vec::new();
    let mut rdns = Der::new(name);
    let mut rdn = 0;
    while !rdns.is_empty() {
        let mut members = Der::new(rdns.take(SET, "RDN is not a SET")?);
        if members.is_empty() {
            return Err(SubjectError::Malformed("empty RDN"));
        }
        while !members.is_empty() {
            let mut pair = Der::new(members.take(SEQUENCE, "attribute is not a SEQUENCE")?);
            let oid = pair.take(OBJECT_IDENTIFIER, "attribute type is not an OID")?;
            let value = pair.next()?;
            if !pair.is_empty() {
                return Err(SubjectError::Malformed("attribute has extra fields"));
            }
            attributes.push(Attribute { rdn, oid, value });
        }
        rdn += 1;
    }
    let mut out = String::new();
    let mut previous_rdn = None;
    // RFC 4514: the last RDN first. OpenSSL also reverses the members of a multi-valued RDN.
    for attribute in attributes.iter().rev() {
        match previous_rdn {
            None => {}
            Some(rdn) if rdn == attribute.rdn => out.push('+'),
            Some(_) => out.push(','),
        }
        previous_rdn = Some(attribute.rdn);
        let oid = dotted_oid(attribute.oid)?;
        let known = ATTRIBUTE_NAMES
            .iter()
            .find(|(dotted, _)| *dotted == oid)
            .map(|(_, name)| *name);
        out.push_str(known.unwrap_or(&oid));
        out.push('=');
        let text = match known {
            Some(_) => value_utf8(attribute.value.tag, attribute.value.content)?,
            None => None,
        };
        match text {
            Some(text) => push_escaped(&mut out, &text),
            None => push_hex_dump(&mut out, attribute.value.encoding),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::nbd::tls::fixtures::CLIENT1_PEM;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
            .collect()
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn subject_of_a_real_certificate() {
        let der = CertificateDer::from_pem_slice(CLIENT1_PEM.as_bytes()).expect("pem");
        assert_eq!(
            subject_of_certificate(&der).expect("subject"),
            "CN=client1,O=sds test"
        );
    }

    /// A Name built by hand with every case OpenSSL treats specially, and what
    /// `openssl req -noout -subject -nameopt RFC2253` (OpenSSL 3.0) printed for a request
    /// carrying it: PrintableString, T61String as Latin-1, BMPString, UniversalString, a
    /// multi-valued RDN with a trailing space, an unknown OID, a known OID with a BIT STRING
    /// value, a leading `#`, controls and `=`, a lone space.
    #[test]
    fn name_matches_openssl_rfc2253() {
        let name = hex(concat!(
            "310b3009060355040613024652310d300b060355040a1404636166e9310d300b060355040b1e04",
            "03a920ac3111300f06035504071c080001f600000000783120300a06035504030c03612c623012",
            "060a0992268993f22c6401010c0478207920310b300906032a03040c026869310c300a06035504",
            "0303030061623114301206092a864886f70d0109011605236c6561643110300e06035504080c07",
            "74616209717f3d310a300806035504030c0120"
        ));
        assert_eq!(
            format_name(&name).expect("name"),
            concat!(
                r"CN=\ ,ST=tab\09q\7F=,emailAddress=\#lead,CN=#0303006162,1.2.3.4=#0C026869,",
                r"UID=x y\ +CN=a\,b,L=\F0\9F\98\80x,OU=\CE\A9\E2\82\AC,O=caf\C3\A9,C=FR"
            )
        );
    }

    #[test]
    fn specials_are_escaped_as_openssl_does() {
        let mut out = String::new();
        push_escaped(&mut out, "a,b+c\"d\\e<f>g;h=i");
        assert_eq!(out, r#"a\,b\+c\"d\\e\<f\>g\;h=i"#);
        out.clear();
        push_escaped(&mut out, " lead#x trail ");
        assert_eq!(out, r"\ lead#x trail\ ");
        out.clear();
        push_escaped(&mut out, "café €");
        assert_eq!(out, r"caf\C3\A9 \E2\82\AC");
    }

    /// A version 1 certificate has no `[0]` version field; the subject is found all the same.
    #[test]
    fn subject_of_a_version_one_certificate() {
        let subject = tlv(
            SEQUENCE,
            &tlv(
                SET,
                &tlv(SEQUENCE, &[hex("0603550403"), tlv(0x0c, b"h1")].concat()),
            ),
        );
        let algorithm = tlv(SEQUENCE, &hex("06082a8648ce3d040302"));
        let body = |version: &[u8]| {
            tlv(
                SEQUENCE,
                &[
                    version.to_vec(),
                    tlv(INTEGER, &[1]),
                    algorithm.clone(),
                    tlv(SEQUENCE, &[]),
                    tlv(SEQUENCE, &[]),
                    subject.clone(),
                    tlv(SEQUENCE, &[]),
                ]
                .concat(),
            )
        };
        for version in [Vec::new(), tlv(VERSION, &tlv(INTEGER, &[2]))] {
            let certificate = tlv(
                SEQUENCE,
                &[body(&version), algorithm.clone(), tlv(0x03, &[0])].concat(),
            );
            assert_eq!(
                subject_of_certificate(&certificate).expect("subject"),
                "CN=h1"
            );
        }
    }

    #[test]
    fn malformed_der_is_refused() {
        let der = CertificateDer::from_pem_slice(CLIENT1_PEM.as_bytes()).expect("pem");
        // Every truncation of a real certificate fails cleanly, never panics.
        for end in 0..der.len() {
            assert!(subject_of_certificate(&der[..end]).is_err(), "{end}");
        }
        for bad in [
            hex("30"),
            hex("3080"),
            hex("308500000000"),
            hex("3003020101"),
            hex("1f0100"),
            tlv(SEQUENCE, &tlv(SEQUENCE, &tlv(INTEGER, &[1]))),
        ] {
            assert!(subject_of_certificate(&bad).is_err(), "{bad:02x?}");
        }
        // An empty RDN, a bad OID, invalid strings.
        assert!(format_name(&tlv(SET, &[])).is_err());
        let attribute = |oid: &[u8], value: Vec<u8>| {
            tlv(
                SET,
                &tlv(SEQUENCE, &[tlv(OBJECT_IDENTIFIER, oid), value].concat()),
            )
        };
        assert!(format_name(&attribute(&[], tlv(0x0c, b"x"))).is_err());
        assert!(format_name(&attribute(&[0x55, 0x04, 0x83], tlv(0x0c, b"x"))).is_err());
        assert!(format_name(&attribute(&[0x55, 0x04, 0x03], tlv(0x0c, &[0xff]))).is_err());
        assert!(format_name(&attribute(&[0x55, 0x04, 0x03], tlv(0x1e, &[0xd8, 0x00]))).is_err());
        assert!(format_name(&attribute(&[0x55, 0x04, 0x03], tlv(0x1c, &[0, 0, 0]))).is_err());
        assert_eq!(format_name(&[]).expect("empty name"), "");
    }
}
