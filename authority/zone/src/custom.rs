//! Custom records (`--custom-records`): records an operator writes in zone-file text (RFC 1035
//! §5), for names inside the cluster domain or in zones of their own, as CoreDNS users write them
//! for the `hosts` and `file` plugins. [`parse_custom`] turns the text into [`CustomRecords`]; the
//! index serves them (see [`crate::index`] for how they meet the generated records).
//!
//! Zone boundaries: a zone is declared by an SOA record (its owner is the apex) or by a `$ORIGIN`
//! outside the cluster domain that is not below another declared zone (a later `$ORIGIN` inside
//! one only shortens names). Records inside the cluster domain need no declaration; any other
//! record outside every declared zone is an error naming its line, so a typo cannot make the
//! authority claim a zone nobody meant.
//!
//! The syntax is RFC 1035's: `$ORIGIN`, `$TTL`, `@`, relative names, an owner left blank to repeat
//! the previous one, `;` comments, `( )` across lines, quoted strings. `$INCLUDE` is refused (the
//! file is the whole set, so a reload sees every change). Record data is parsed by hickory's
//! zone-file parser, so every type it knows is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::txt::{Parser, parse_ttl};

/// A custom-records file that cannot be served, with the line at fault (1-based; the first line
/// of an entry that spans several).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct CustomError {
    pub line: usize,
    pub message: String,
}

/// A zone the file declares, outside the cluster domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomZone {
    /// Absolute, lower case.
    pub apex: Name,
    /// The zone's SOA as the file gives it; `None`: the index makes one (its MNAME the cluster
    /// zone's `ns.dns` name, its serial the index's).
    pub soa: Option<Record>,
}

/// The records of a custom-records file, checked: owners absolute and lower case, every owner
/// inside the cluster domain or a declared zone, no CNAME beside other data, one TTL per RRset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomRecords {
    /// Every record but the SOAs (those are in `zones`), in file order, without duplicates.
    pub(crate) records: Vec<Record>,
    /// Declared zones, apex order.
    pub(crate) zones: Vec<CustomZone>,
}

impl CustomRecords {
    /// The records (SOAs left out: they are the zones').
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The zones the file declares.
    pub fn zones(&self) -> &[CustomZone] {
        &self.zones
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.zones.is_empty()
    }

    /// The records of each owner (lower-case absolute text, as change notices name owners).
    pub(crate) fn by_owner(&self) -> BTreeMap<String, Vec<&Record>> {
        let mut out: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
        let soas = self.zones.iter().filter_map(|z| z.soa.as_ref());
        for r in self.records.iter().chain(soas) {
            out.entry(r.name.to_ascii()).or_default().push(r);
        }
        out
    }
}

/// Origin given to hickory's parser when the file has set none: a name in the data that does not
/// end in a dot comes out under it, and is refused.
const NO_ORIGIN: &str = "nodedns-no-origin.invalid.";

/// One entry of the file: an RR or a directive, joined across `( )` line breaks.
struct Entry<'t> {
    /// The line it starts on.
    line: usize,
    /// It starts with a blank: the owner is the previous entry's.
    blank_owner: bool,
    /// Its words; a quoted string keeps its quotes (and escapes) for the record-data parser.
    words: Vec<&'t str>,
}

/// Splits the text into entries: comments dropped, parentheses resolved, quotes kept whole.
fn entries(text: &str) -> Result<Vec<Entry<'_>>, CustomError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut line = 1;
    let mut entry = Entry { line: 1, blank_owner: false, words: Vec::new() };
    let mut depth = 0usize;
    let mut at_line_start = true;
    let mut i = 0;
    while i < bytes.len() {
        if at_line_start && depth == 0 {
            entry = Entry { line, blank_owner: matches!(bytes[i], b' ' | b'\t'), words: Vec::new() };
        }
        at_line_start = false;
        match bytes[i] {
            b'\n' => {
                line += 1;
                at_line_start = true;
                if depth == 0 && !entry.words.is_empty() {
                    out.push(std::mem::replace(
                        &mut entry,
                        Entry { line, blank_owner: false, words: Vec::new() },
                    ));
                }
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b';' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                if depth == 0 {
                    return Err(CustomError { line, message: "')' without '('".into() });
                }
                depth -= 1;
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\n' {
                        return Err(CustomError {
                            line,
                            message: "a quoted string must end on its line".into(),
                        });
                    }
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if i >= bytes.len() {
                    return Err(CustomError { line, message: "a quoted string is not closed".into() });
                }
                i += 1;
                entry.words.push(&text[start..i]);
            }
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(bytes[i], b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b')' | b'"')
                {
                    // `\X` quotes X (a `\;` or `\ ` is part of the word); delimiters are ASCII, so
                    // every slice boundary stays on a character boundary.
                    i +=
                        if bytes[i] == b'\\' && i + 1 < bytes.len() && bytes[i + 1] != b'\n' { 2 } else { 1 };
                }
                entry.words.push(&text[start..i.min(bytes.len())]);
            }
        }
    }
    if depth > 0 {
        return Err(CustomError { line: entry.line, message: "'(' is not closed".into() });
    }
    if !entry.words.is_empty() {
        out.push(entry);
    }
    Ok(out)
}

/// The parser's running state (RFC 1035 §5.1 defaults).
struct Cursor {
    origin: Option<Name>,
    owner: Option<Name>,
    /// `$TTL`.
    default_ttl: Option<u32>,
    /// The last TTL written on a record (used when there is no `$TTL`).
    last_ttl: Option<u32>,
}

impl Cursor {
    /// A name as written, relative ones under the origin; it must come out absolute.
    fn name(&self, word: &str, line: usize) -> Result<Name, CustomError> {
        let err = |message: String| CustomError { line, message };
        if word == "@" {
            return self.origin.clone().ok_or_else(|| err("'@' with no $ORIGIN".into()));
        }
        let name = Name::parse(word, self.origin.as_ref()).map_err(|e| err(format!("{word:?}: {e}")))?;
        if !name.is_fqdn() {
            return Err(err(format!("{word:?} is relative and there is no $ORIGIN: end it with a dot")));
        }
        Ok(name.to_lowercase())
    }
}

/// Parses custom-records text. `cluster_domain` is the authority's (absolute); `default_ttl`
/// is the TTL of records that give none and follow no `$TTL` (the authority passes `--ttl`).
pub fn parse_custom(
    text: &str,
    cluster_domain: &Name,
    default_ttl: u32,
) -> Result<CustomRecords, CustomError> {
    let cluster = cluster_domain.to_lowercase();
    let mut cur = Cursor { origin: None, owner: None, default_ttl: None, last_ttl: None };
    let mut origins: Vec<(usize, Name)> = Vec::new();
    let mut records: Vec<(usize, Record)> = Vec::new();
    for entry in entries(text)? {
        let line = entry.line;
        let err = |message: String| CustomError { line, message };
        let mut words = entry.words.iter().copied().peekable();
        if !entry.blank_owner
            && let Some(directive) = words.next_if(|w| w.starts_with('$'))
        {
            let args: Vec<&str> = words.collect();
            match (directive.to_ascii_uppercase().as_str(), args.as_slice()) {
                ("$ORIGIN", [name]) => {
                    let origin = cur.name(name, line)?;
                    origins.push((line, origin.clone()));
                    cur.origin = Some(origin);
                }
                ("$TTL", [ttl]) => {
                    cur.default_ttl = Some(parse_ttl(ttl).map_err(|e| err(format!("$TTL {ttl}: {e}")))?);
                }
                ("$ORIGIN" | "$TTL", _) => return Err(err(format!("{directive} takes one value"))),
                ("$INCLUDE", _) => {
                    return Err(err("$INCLUDE is not supported: put the records in this file".into()));
                }
                _ => return Err(err(format!("unknown directive {directive}"))),
            }
            continue;
        }
        if !entry.blank_owner
            && let Some(word) = words.next()
        {
            cur.owner = Some(cur.name(word, line)?);
        }
        let Some(owner) = cur.owner.clone() else {
            return Err(err("no owner name (the first record must start with one)".into()));
        };
        // `[TTL] [class] type` in either order (RFC 1035 §5.1).
        let mut ttl = None;
        let rtype = loop {
            let Some(word) = words.next() else {
                return Err(err("no record type".into()));
            };
            if ttl.is_none() && word.starts_with(|c: char| c.is_ascii_digit()) {
                ttl = Some(parse_ttl(word).map_err(|e| err(format!("TTL {word}: {e}")))?);
                continue;
            }
            let upper = word.to_ascii_uppercase();
            if let Ok(class) = DNSClass::from_str(&upper) {
                if class != DNSClass::IN {
                    return Err(err(format!("class {word}: only IN is served")));
                }
                continue;
            }
            break RecordType::from_str(&upper).map_err(|_| err(format!("{word:?} is not a record type")))?;
        };
        if let Some(t) = ttl {
            cur.last_ttl = Some(t);
        }
        let ttl = ttl.or(cur.default_ttl).or(cur.last_ttl).unwrap_or(default_ttl);
        let mut data = Vec::new();
        for word in words {
            // hickory's data parsers know no `@`.
            data.push(if word == "@" { cur.name(word, line)?.to_ascii() } else { word.to_owned() });
        }
        if data.is_empty() {
            return Err(err(format!("{rtype} has no data")));
        }
        let record = parse_data(&owner, rtype, &data, cur.origin.as_ref())
            .map_err(|message| err(format!("{rtype} {}: {message}", data.join(" "))))?;
        let mut record = record;
        record.ttl = ttl;
        records.push((line, record));
    }
    check(records, &origins, &cluster)
}

/// The data of one record, by hickory's zone-file parser (one synthesized line: owner absolute,
/// class IN, the data words as written).
fn parse_data(
    owner: &Name,
    rtype: RecordType,
    data: &[String],
    origin: Option<&Name>,
) -> Result<Record, String> {
    let text = format!("{} 0 IN {rtype} {}\n", owner.to_ascii(), data.join(" "));
    let no_origin = Name::from_ascii(NO_ORIGIN).map_err(|e| e.to_string())?;
    let (_, sets) = Parser::new(text, None, Some(origin.cloned().unwrap_or(no_origin)))
        .parse()
        .map_err(|e| e.to_string())?;
    let record = sets.into_values().flat_map(IntoIterator::into_iter).next().ok_or("no record parsed")?;
    if origin.is_none() && record.data.to_string().contains(NO_ORIGIN) {
        return Err("a name in the data is relative and there is no $ORIGIN: end it with a dot".into());
    }
    Ok(record)
}

/// Declares the zones and checks every record against them and against each other.
fn check(
    records: Vec<(usize, Record)>,
    origins: &[(usize, Name)],
    cluster: &Name,
) -> Result<CustomRecords, CustomError> {
    let mut soas: BTreeMap<Name, Record> = BTreeMap::new();
    for (line, r) in records.iter().filter(|(_, r)| r.record_type() == RecordType::SOA) {
        let err = |message: String| CustomError { line: *line, message };
        if cluster.zone_of(&r.name) {
            return Err(err(format!("SOA {}: the authority makes the cluster zone's SOA", r.name)));
        }
        if soas.insert(r.name.clone(), r.clone()).is_some() {
            return Err(err(format!("a second SOA for {}", r.name)));
        }
    }
    let mut candidates: BTreeSet<Name> = BTreeSet::new();
    for (line, origin) in origins {
        if origin.is_root() {
            return Err(CustomError { line: *line, message: "$ORIGIN . would claim every name".into() });
        }
        if !cluster.zone_of(origin) {
            candidates.insert(origin.clone());
        }
    }
    // An SOA always cuts a zone; a `$ORIGIN` below another declared apex only shortens names.
    let declared: Vec<&Name> = soas.keys().chain(&candidates).collect();
    let below_another = |n: &Name| declared.iter().any(|d| *d != n && d.zone_of(n));
    let mut zones: Vec<CustomZone> =
        soas.iter().map(|(apex, soa)| CustomZone { apex: apex.clone(), soa: Some(soa.clone()) }).collect();
    for apex in candidates.iter().filter(|n| !soas.contains_key(*n) && !below_another(n)) {
        zones.push(CustomZone { apex: apex.clone(), soa: None });
    }
    zones.sort_by(|a, b| a.apex.cmp(&b.apex));

    let mut kept: Vec<Record> = Vec::new();
    let mut types: BTreeMap<Name, BTreeSet<RecordType>> = BTreeMap::new();
    for (line, r) in records.into_iter().filter(|(_, r)| r.record_type() != RecordType::SOA) {
        let err = |message: String| CustomError { line, message };
        let owner = &r.name;
        if *owner == *cluster {
            return Err(err(format!("{owner} is the cluster zone's apex: its records are the authority's")));
        }
        if !cluster.zone_of(owner) && !zones.iter().any(|z| z.apex.zone_of(owner)) {
            return Err(err(format!(
                "{owner} is outside the cluster domain {cluster} and every zone this file declares \
                 (declare one with $ORIGIN or an SOA record)"
            )));
        }
        let rtype = r.record_type();
        let seen = types.entry(owner.clone()).or_default();
        if kept.iter().any(|k| k.name == *owner && k.record_type() == rtype && k.data == r.data) {
            continue;
        }
        // RFC 1034 §3.6.2: a CNAME is the only record of its owner.
        if (rtype == RecordType::CNAME && !seen.is_empty())
            || (rtype != RecordType::CNAME && seen.contains(&RecordType::CNAME))
        {
            return Err(err(format!("{owner} has a CNAME and other records (RFC 1034 §3.6.2)")));
        }
        seen.insert(rtype);
        kept.push(r);
    }
    // One TTL per RRset (RFC 2181 §5.2): the smallest given.
    let mut ttls: BTreeMap<(Name, RecordType), u32> = BTreeMap::new();
    for r in &kept {
        let ttl = ttls.entry((r.name.clone(), r.record_type())).or_insert(r.ttl);
        *ttl = (*ttl).min(r.ttl);
    }
    for r in &mut kept {
        r.ttl = ttls[&(r.name.clone(), r.record_type())];
    }
    Ok(CustomRecords { records: kept, zones })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CustomRecords, CustomError> {
        parse_custom(text, &Name::from_ascii("cluster.local.").unwrap(), 5)
    }

    fn lines(c: &CustomRecords) -> Vec<String> {
        c.records.iter().map(|r| nodedns_testsupport::corpus::present(r).join(" ")).collect()
    }

    #[test]
    fn zone_file_syntax() {
        let c = parse(
            "; hosts-style names in the cluster domain\n\
             db.cluster.local.  IN A 10.9.0.1\n\
             \n\
             $ORIGIN corp.example.\n\
             $TTL 1h\n\
             @        MX   10 mail      ; relative to the origin\n\
             mail     60 IN A    192.0.2.25\n\
             \x20        AAAA 2001:db8::25\n\
             WWW      CNAME mail\n\
             txt      TXT  \"v=spf1 -all\" \"a;b\"\n\
             svc      SRV  ( 0 5\n\
             \x20             443 www )\n",
        )
        .unwrap();
        assert_eq!(
            lines(&c),
            [
                "db.cluster.local. 5 IN A 10.9.0.1",
                "corp.example. 3600 IN MX 10 mail.corp.example.",
                "mail.corp.example. 60 IN A 192.0.2.25",
                "mail.corp.example. 3600 IN AAAA 2001:db8::25",
                "www.corp.example. 3600 IN CNAME mail.corp.example.",
                "txt.corp.example. 3600 IN TXT \"v=spf1 -all\" \"a;b\"",
                "svc.corp.example. 3600 IN SRV 0 5 443 www.corp.example.",
            ]
        );
        let apexes: Vec<String> = c.zones.iter().map(|z| z.apex.to_ascii()).collect();
        assert_eq!(apexes, ["corp.example."]);
        assert!(c.zones[0].soa.is_none());
    }

    #[test]
    fn zones_come_from_soa_records_and_origins_outside_the_cluster_domain() {
        let c = parse(
            "$ORIGIN example.org.\n\
             @ SOA ns.example.org. admin.example.org. 7 3600 600 86400 30\n\
             $ORIGIN sub.example.org.\n\
             a A 192.0.2.1\n\
             $ORIGIN svc.cluster.local.\n\
             extra.ns1 A 10.9.0.2\n\
             $ORIGIN other.test.\n\
             b TXT hello\n",
        )
        .unwrap();
        let apexes: Vec<String> = c.zones.iter().map(|z| z.apex.to_ascii()).collect();
        assert_eq!(apexes, ["example.org.", "other.test."], "sub.example.org. only shortens names");
        assert!(c.zones[0].soa.is_some());
        assert_eq!(c.records.len(), 3);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("a.example.com. A 192.0.2.1\n", 1, "outside the cluster domain"),
            ("$ORIGIN corp.example.\n\nx A 192.0.2.300\n", 3, "A 192.0.2.300"),
            ("x.cluster.local. A 10.0.0.1\nfoo A 10.0.0.2\n", 2, "relative"),
            ("x.cluster.local. CNAME target\n", 1, "relative"),
            ("x.cluster.local. BOGUS 1\n", 1, "not a record type"),
            ("x.cluster.local. CH A 10.0.0.1\n", 1, "only IN"),
            ("x.cluster.local. A\n", 1, "no data"),
            ("$INCLUDE other.zone\n", 1, "$INCLUDE"),
            ("$ORIGIN .\n", 1, "every name"),
            ("cluster.local. TXT hi\n", 1, "apex"),
            ("cluster.local. SOA a. b. 1 2 3 4 5\n", 1, "SOA"),
            ("x.cluster.local. A 10.0.0.1\nx.cluster.local. CNAME y.cluster.local.\n", 2, "CNAME"),
            ("x.cluster.local. TXT (\n\"a\"\n", 1, "not closed"),
            ("x.cluster.local. TXT \"a\n", 1, "quoted"),
            ("  A 10.0.0.1\n", 1, "owner"),
        ];
        for (text, line, says) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(says), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        for text in [
            "\\",
            "\"\\",
            "(",
            ")",
            "$ORIGIN",
            "$TTL x",
            "@",
            "a. A",
            "é\\é A 1.2.3.4",
            "x.cluster.local. \"é\\é",
            "x.cluster.local. 99999999999 A 10.0.0.1",
            "x.cluster.local. MX ten mail.example.",
            "$ORIGIN corp.example.\n@ SOA x",
            "x.cluster.local. A 10.0.0.1 ( ; open\n",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn duplicates_collapse_and_an_rrset_gets_one_ttl() {
        let c = parse(
            "x.cluster.local. 30 A 10.0.0.1\nx.cluster.local. 10 A 10.0.0.2\nx.cluster.local. 30 A 10.0.0.1\n",
        )
        .unwrap();
        assert_eq!(lines(&c), ["x.cluster.local. 10 IN A 10.0.0.1", "x.cluster.local. 10 IN A 10.0.0.2"]);
    }
}
