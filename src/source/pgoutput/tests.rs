//! Byte-level fixtures, error cases and round-trip properties for the pgoutput decoder.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Fixtures: hand-written bytes as Postgres would send them, with the message they mean.
// ---------------------------------------------------------------------------------------------

/// 2024-01-15 12:00:00 UTC in microseconds since 2000-01-01.
const COMMIT_TIME: i64 = 758_635_200_000_000;
const COMMIT_TIME_BYTES: [u8; 8] = [0x00, 0x02, 0xb1, 0xf9, 0x85, 0x9c, 0x30, 0x00];
/// `public.account_invoice`, OID 16385.
const INVOICE_OID: [u8; 4] = [0x00, 0x00, 0x40, 0x01];
/// Top-level xid 1234 of the streamed transaction.
const STREAM_XID: [u8; 4] = [0x00, 0x00, 0x04, 0xd2];

struct Fixture {
    name: &'static str,
    in_stream: bool,
    bytes: Vec<u8>,
    message: Message,
}

fn fixture(name: &'static str, in_stream: bool, parts: &[&[u8]], message: Message) -> Fixture {
    Fixture {
        name,
        in_stream,
        bytes: parts.concat(),
        message,
    }
}

fn text(s: &'static str) -> Datum {
    Datum::Text(Bytes::from_static(s.as_bytes()))
}

fn begin_fixture() -> Fixture {
    fixture(
        "Begin",
        false,
        &[
            b"B",
            &[0, 0, 0, 0, 0x01, 0x6b, 0x37, 0x48], // final LSN 0/16B3748
            &COMMIT_TIME_BYTES,
            &[0x00, 0x00, 0x02, 0xf1], // xid 753
        ],
        Message::Begin(Begin {
            final_lsn: Lsn(0x016b_3748),
            commit_time: COMMIT_TIME,
            xid: 753,
        }),
    )
}

fn commit_fixture() -> Fixture {
    fixture(
        "Commit",
        false,
        &[
            b"C",
            &[0x00],                               // flags
            &[0, 0, 0, 0, 0x01, 0x6b, 0x37, 0x48], // commit LSN 0/16B3748
            &[0, 0, 0, 0, 0x01, 0x6b, 0x37, 0x78], // end LSN 0/16B3778
            &COMMIT_TIME_BYTES,
        ],
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x016b_3748),
            end_lsn: Lsn(0x016b_3778),
            commit_time: COMMIT_TIME,
        }),
    )
}

fn origin_fixture() -> Fixture {
    fixture(
        "Origin",
        false,
        &[b"O", &[0, 0, 0, 0, 0x03, 0x00, 0x00, 0x60], b"node_a\0"],
        Message::Origin(Origin {
            commit_lsn: Lsn(0x0300_0060),
            name: "node_a".into(),
        }),
    )
}

fn relation_fixture() -> Fixture {
    fixture(
        "Relation",
        false,
        &[
            b"R",
            &INVOICE_OID,
            b"public\0",
            b"account_invoice\0",
            b"d",          // replica identity default
            &[0x00, 0x03], // 3 columns
            &[0x01],       // key
            b"id\0",
            &[0x00, 0x00, 0x00, 0x14], // int8
            &[0xff, 0xff, 0xff, 0xff], // no typmod
            &[0x00],
            b"partner_id\0",
            &[0x00, 0x00, 0x00, 0x17], // int4
            &[0xff, 0xff, 0xff, 0xff],
            &[0x00],
            b"amount_total\0",
            &[0x00, 0x00, 0x06, 0xa4], // numeric
            &[0x00, 0x0c, 0x00, 0x06], // (12,2): (12 << 16 | 2) + VARHDRSZ
        ],
        Message::Relation(Relation {
            xid: None,
            oid: 16385,
            namespace: "public".into(),
            name: "account_invoice".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                RelationColumn {
                    is_key: true,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                RelationColumn {
                    is_key: false,
                    name: "partner_id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                },
                RelationColumn {
                    is_key: false,
                    name: "amount_total".into(),
                    type_oid: 1700,
                    type_modifier: 786_438,
                },
            ],
        }),
    )
}

fn type_fixture() -> Fixture {
    fixture(
        "Type",
        false,
        &[b"Y", &[0x00, 0x00, 0x40, 0x06], b"public\0", b"mood\0"],
        Message::Type(TypeInfo {
            xid: None,
            oid: 16390,
            namespace: "public".into(),
            name: "mood".into(),
        }),
    )
}

fn insert_fixture() -> Fixture {
    fixture(
        "Insert",
        false,
        &[
            b"I",
            &INVOICE_OID,
            b"N",
            &[0x00, 0x03],
            b"t",
            &[0, 0, 0, 2],
            b"42",
            b"t",
            &[0, 0, 0, 1],
            b"7",
            b"t",
            &[0, 0, 0, 6],
            b"150.00",
        ],
        Message::Insert(Insert {
            xid: None,
            relation: 16385,
            new: Tuple(vec![text("42"), text("7"), text("150.00")]),
        }),
    )
}

fn update_fixture() -> Fixture {
    fixture(
        "Update",
        false,
        &[
            b"U",
            &INVOICE_OID,
            b"O", // whole old row: REPLICA IDENTITY FULL
            &[0x00, 0x03],
            b"n",
            b"u",
            b"t",
            &[0, 0, 0, 6],
            b"150.00",
            b"N",
            &[0x00, 0x03],
            b"t",
            &[0, 0, 0, 1],
            b"7",
            b"u",
            b"t",
            &[0, 0, 0, 6],
            b"175.50",
        ],
        Message::Update(Update {
            xid: None,
            relation: 16385,
            old: Some(OldTuple::Full(Tuple(vec![
                Datum::Null,
                Datum::UnchangedToast,
                text("150.00"),
            ]))),
            new: Tuple(vec![text("7"), Datum::UnchangedToast, text("175.50")]),
        }),
    )
}

fn update_without_old_fixture() -> Fixture {
    fixture(
        "Update without old tuple",
        false,
        &[
            b"U",
            &INVOICE_OID,
            b"N",
            &[0x00, 0x01],
            b"t",
            &[0, 0, 0, 2],
            b"42",
        ],
        Message::Update(Update {
            xid: None,
            relation: 16385,
            old: None,
            new: Tuple(vec![text("42")]),
        }),
    )
}

fn delete_fixture() -> Fixture {
    fixture(
        "Delete",
        false,
        &[
            b"D",
            &INVOICE_OID,
            b"K", // key only; non-key columns come as nulls
            &[0x00, 0x03],
            b"t",
            &[0, 0, 0, 2],
            b"42",
            b"n",
            b"n",
        ],
        Message::Delete(Delete {
            xid: None,
            relation: 16385,
            old: OldTuple::Key(Tuple(vec![text("42"), Datum::Null, Datum::Null])),
        }),
    )
}

fn truncate_fixture() -> Fixture {
    fixture(
        "Truncate",
        false,
        &[
            b"T",
            &[0, 0, 0, 2], // 2 relations
            &[0x03],       // CASCADE | RESTART IDENTITY
            &INVOICE_OID,
            &[0x00, 0x00, 0x40, 0x08],
        ],
        Message::Truncate(Truncate {
            xid: None,
            cascade: true,
            restart_identity: true,
            relations: vec![16385, 16392],
        }),
    )
}

fn message_fixture() -> Fixture {
    fixture(
        "Message",
        false,
        &[
            b"M",
            &[0x01], // transactional
            &[0, 0, 0, 0, 0x01, 0x6b, 0x38, 0x00],
            b"walhook\0",
            &[0, 0, 0, 5],
            b"hello",
        ],
        Message::Message(LogicalMessage {
            xid: None,
            transactional: true,
            lsn: Lsn(0x016b_3800),
            prefix: "walhook".into(),
            content: Bytes::from_static(b"hello"),
        }),
    )
}

fn stream_start_fixture() -> Fixture {
    fixture(
        "Stream Start",
        false,
        &[b"S", &STREAM_XID, &[0x01]],
        Message::StreamStart(StreamStart {
            xid: 1234,
            first_segment: true,
        }),
    )
}

fn stream_stop_fixture() -> Fixture {
    fixture("Stream Stop", true, &[b"E"], Message::StreamStop)
}

fn stream_commit_fixture() -> Fixture {
    fixture(
        "Stream Commit",
        false,
        &[
            b"c",
            &STREAM_XID,
            &[0x00],
            &[0, 0, 0, 0, 0x05, 0x00, 0x00, 0x28],
            &[0, 0, 0, 0, 0x05, 0x00, 0x00, 0x58],
            &COMMIT_TIME_BYTES,
        ],
        Message::StreamCommit(StreamCommit {
            xid: 1234,
            flags: 0,
            commit_lsn: Lsn(0x0500_0028),
            end_lsn: Lsn(0x0500_0058),
            commit_time: COMMIT_TIME,
        }),
    )
}

fn stream_abort_fixture() -> Fixture {
    fixture(
        "Stream Abort",
        false,
        &[b"A", &STREAM_XID, &[0x00, 0x00, 0x04, 0xd8]],
        Message::StreamAbort(StreamAbort {
            xid: 1234,
            subxid: 1240,
        }),
    )
}

/// The row messages as sent inside a stream block, each with the xid after the tag.
fn in_stream_fixtures() -> Vec<Fixture> {
    vec![
        fixture(
            "Relation in stream",
            true,
            &[
                b"R",
                &STREAM_XID,
                &[0x00, 0x00, 0x40, 0x10],
                b"public\0",
                b"events\0",
                b"f",
                &[0x00, 0x01],
                &[0x00],
                b"payload\0",
                &[0x00, 0x00, 0x00, 0x11], // bytea
                &[0xff, 0xff, 0xff, 0xff],
            ],
            Message::Relation(Relation {
                xid: Some(1234),
                oid: 16400,
                namespace: "public".into(),
                name: "events".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![RelationColumn {
                    is_key: false,
                    name: "payload".into(),
                    type_oid: 17,
                    type_modifier: -1,
                }],
            }),
        ),
        fixture(
            "Type in stream",
            true,
            &[
                b"Y",
                &STREAM_XID,
                &[0x00, 0x00, 0x40, 0x06],
                b"\0",
                b"mood\0",
            ],
            Message::Type(TypeInfo {
                xid: Some(1234),
                oid: 16390,
                namespace: String::new(),
                name: "mood".into(),
            }),
        ),
        fixture(
            "Insert in stream (binary)",
            true,
            &[
                // xid of a subtransaction: in a stream, row messages carry the one that made them
                b"I",
                &[0x00, 0x00, 0x04, 0xd8],
                &[0x00, 0x00, 0x40, 0x10],
                b"N",
                &[0x00, 0x01],
                b"b",
                &[0, 0, 0, 3],
                &[0xde, 0xad, 0x00],
            ],
            Message::Insert(Insert {
                xid: Some(1240),
                relation: 16400,
                new: Tuple(vec![Datum::Binary(Bytes::from_static(&[0xde, 0xad, 0x00]))]),
            }),
        ),
        fixture(
            "Update in stream",
            true,
            &[
                b"U",
                &STREAM_XID,
                &INVOICE_OID,
                b"K",
                &[0x00, 0x01],
                b"t",
                &[0, 0, 0, 2],
                b"42",
                b"N",
                &[0x00, 0x01],
                b"t",
                &[0, 0, 0, 2],
                b"43",
            ],
            Message::Update(Update {
                xid: Some(1234),
                relation: 16385,
                old: Some(OldTuple::Key(Tuple(vec![text("42")]))),
                new: Tuple(vec![text("43")]),
            }),
        ),
        fixture(
            "Delete in stream",
            true,
            &[b"D", &STREAM_XID, &INVOICE_OID, b"O", &[0x00, 0x01], b"u"],
            Message::Delete(Delete {
                xid: Some(1234),
                relation: 16385,
                old: OldTuple::Full(Tuple(vec![Datum::UnchangedToast])),
            }),
        ),
        fixture(
            "Truncate in stream",
            true,
            &[b"T", &STREAM_XID, &[0, 0, 0, 1], &[0x00], &INVOICE_OID],
            Message::Truncate(Truncate {
                xid: Some(1234),
                cascade: false,
                restart_identity: false,
                relations: vec![16385],
            }),
        ),
        fixture(
            "Message in stream",
            true,
            &[
                b"M",
                &STREAM_XID,
                &[0x01],
                &[0, 0, 0, 0, 0x05, 0x00, 0x00, 0x10],
                b"audit\0",
                &[0, 0, 0, 0],
            ],
            Message::Message(LogicalMessage {
                xid: Some(1234),
                transactional: true,
                lsn: Lsn(0x0500_0010),
                prefix: "audit".into(),
                content: Bytes::new(),
            }),
        ),
        fixture(
            "Origin in stream",
            true,
            // Sent right after Stream Start, with no xid and an invalid LSN.
            &[b"O", &[0; 8], b"node_a\0"],
            Message::Origin(Origin {
                commit_lsn: Lsn::ZERO,
                name: "node_a".into(),
            }),
        ),
    ]
}

fn all_fixtures() -> Vec<Fixture> {
    let mut all = vec![
        begin_fixture(),
        commit_fixture(),
        origin_fixture(),
        relation_fixture(),
        type_fixture(),
        insert_fixture(),
        update_fixture(),
        update_without_old_fixture(),
        delete_fixture(),
        truncate_fixture(),
        message_fixture(),
        stream_start_fixture(),
        stream_stop_fixture(),
        stream_commit_fixture(),
        stream_abort_fixture(),
    ];
    all.extend(in_stream_fixtures());
    all
}

fn decoder(in_stream: bool) -> Decoder {
    Decoder { in_stream }
}

fn decode_fixture(f: &Fixture) -> Result<Message, DecodeError> {
    decoder(f.in_stream).decode(Bytes::from(f.bytes.clone()))
}

#[track_caller]
fn assert_decodes(f: Fixture) {
    assert_eq!(decode_fixture(&f), Ok(f.message), "{}", f.name);
}

#[test]
fn decodes_begin() {
    assert_decodes(begin_fixture());
}

#[test]
fn decodes_commit() {
    assert_decodes(commit_fixture());
}

#[test]
fn decodes_origin() {
    assert_decodes(origin_fixture());
}

#[test]
fn decodes_relation() {
    assert_decodes(relation_fixture());
}

#[test]
fn decodes_type() {
    assert_decodes(type_fixture());
}

#[test]
fn decodes_insert() {
    assert_decodes(insert_fixture());
}

#[test]
fn decodes_update_with_full_old_row() {
    assert_decodes(update_fixture());
}

#[test]
fn decodes_update_without_old_tuple() {
    assert_decodes(update_without_old_fixture());
}

#[test]
fn decodes_delete() {
    assert_decodes(delete_fixture());
}

#[test]
fn decodes_truncate() {
    assert_decodes(truncate_fixture());
}

#[test]
fn decodes_logical_message() {
    assert_decodes(message_fixture());
}

#[test]
fn decodes_stream_messages() {
    assert_decodes(stream_start_fixture());
    assert_decodes(stream_stop_fixture());
    assert_decodes(stream_commit_fixture());
    assert_decodes(stream_abort_fixture());
}

#[test]
fn decodes_xid_carrying_messages_inside_a_stream() {
    for f in in_stream_fixtures() {
        assert_decodes(f);
    }
}

#[test]
fn decodes_a_stream_block_in_sequence() {
    let mut d = Decoder::new();
    let stream: Vec<Fixture> = [stream_start_fixture()]
        .into_iter()
        .chain(in_stream_fixtures())
        .chain([stream_stop_fixture(), stream_commit_fixture()])
        .collect();
    for f in stream {
        assert_eq!(d.decode(Bytes::from(f.bytes)), Ok(f.message), "{}", f.name);
    }
    assert!(!d.in_stream);
}

#[test]
fn accepts_protocol_v4_stream_abort_with_abort_lsn_and_time() {
    let f = stream_abort_fixture();
    let v4 = [
        &f.bytes[..],
        &[0, 0, 0, 0, 0x05, 0, 0, 0x80],
        &COMMIT_TIME_BYTES,
    ]
    .concat();
    assert_eq!(Decoder::new().decode(Bytes::from(v4)), Ok(f.message));
}

#[test]
fn column_values_share_the_input_buffer() {
    let input = Bytes::from(update_fixture().bytes);
    let range = input.as_ptr_range();
    let Ok(Message::Update(update)) = Decoder::new().decode(input.clone()) else {
        panic!("fixture should decode to an Update");
    };
    let Some(Datum::Text(value)) = update.new.0.get(2) else {
        panic!("third new column should be text");
    };
    assert_eq!(value.as_ref(), b"175.50");
    assert!(
        range.contains(&value.as_ptr()),
        "value was copied out of the input"
    );
}

#[test]
fn test_encoder_writes_the_fixture_bytes() {
    // The properties below trust `encode`; pin it to the hand-written bytes first.
    for f in all_fixtures() {
        assert_eq!(encode(&f.message, f.in_stream), f.bytes, "{}", f.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn every_prefix_of_every_fixture_is_an_error() {
    for f in all_fixtures() {
        for len in 0..f.bytes.len() {
            let mut d = decoder(f.in_stream);
            let prefix = Bytes::copy_from_slice(&f.bytes[..len]);
            assert!(
                d.decode(prefix).is_err(),
                "{} cut to {len} bytes decoded",
                f.name
            );
            assert_eq!(
                d.in_stream, f.in_stream,
                "{}: failed decode changed state",
                f.name
            );
        }
    }
}

#[test]
fn empty_input() {
    assert_eq!(Decoder::new().decode(Bytes::new()), Err(DecodeError::Empty));
}

#[test]
fn unknown_tag_names_the_byte() {
    // 'P' is Prepare, a two-phase message of protocol v3.
    let err = Decoder::new()
        .decode(Bytes::from_static(b"P\0\0"))
        .unwrap_err();
    assert_eq!(err, DecodeError::UnknownTag { tag: b'P' });
    let text = err.to_string();
    assert!(text.contains("'P' (0x50)"), "{text}");
}

#[test]
fn truncation_error_says_where_and_what() {
    let mut bytes = update_fixture().bytes;
    bytes.truncate(bytes.len() - 8); // into the length of the third new column
    let err = Decoder::new().decode(Bytes::from(bytes)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pgoutput Update message truncated at byte 32 while reading new tuple column 3 length \
         (needs 4 bytes, 2 left)"
    );
}

#[test]
fn unterminated_string() {
    let err = Decoder::new()
        .decode(Bytes::from_static(b"Y\0\0\x40\x06public"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pgoutput Type message truncated at byte 5 while reading namespace (no NUL terminator)"
    );
}

#[test]
fn bad_tuple_tag() {
    let mut bytes = insert_fixture().bytes;
    bytes[8] = b'x'; // kind of the first column
    let err = Decoder::new().decode(Bytes::from(bytes)).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::UnexpectedByte {
            byte: b'x',
            offset: 8,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "pgoutput Insert message has unexpected new tuple column 1 kind 'x' (0x78) at byte 8; \
         expected 'n', 'u', 't' or 'b'"
    );
}

#[test]
fn bad_tuple_markers() {
    let mut insert = insert_fixture().bytes;
    insert[5] = b'K';
    let mut update = update_fixture().bytes;
    update[21] = b'X'; // where 'N' follows the old tuple
    let mut delete = delete_fixture().bytes;
    delete[5] = b'N';
    for (bytes, expected) in [(insert, "'N'"), (update, "'N'"), (delete, "'K' or 'O'")] {
        let err = Decoder::new().decode(Bytes::from(bytes)).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnexpectedByte { expected: e, .. } if e == expected),
            "{err}"
        );
    }
}

#[test]
fn bad_replica_identity() {
    let mut bytes = relation_fixture().bytes;
    bytes[28] = b'x';
    let err = Decoder::new().decode(Bytes::from(bytes)).unwrap_err();
    assert!(
        err.to_string()
            .contains("replica identity 'x' (0x78) at byte 28"),
        "{err}"
    );
}

#[test]
fn negative_lengths() {
    let tuple = Bytes::from_static(b"I\0\0\x40\x01N\0\x01t\xff\xff\xff\xff");
    let err = Decoder::new().decode(tuple).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pgoutput Insert message has negative new tuple column 1 length -1 at byte 9"
    );
    let truncate = Bytes::from_static(b"T\x80\0\0\0\0");
    let err = Decoder::new().decode(truncate).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::NegativeLength {
                value: i32::MIN,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn huge_counts_fail_without_huge_allocations() {
    let truncate = Bytes::from_static(b"T\x7f\xff\xff\xff\0");
    assert!(Decoder::new().decode(truncate).is_err());
    let tuple = Bytes::from_static(b"I\0\0\x40\x01N\x7f\xff");
    assert!(Decoder::new().decode(tuple).is_err());
}

#[test]
fn stream_stop_outside_a_stream() {
    let err = Decoder::new().decode(Bytes::from_static(b"E")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pgoutput Stream Stop message outside a stream block (no Stream Start before it)"
    );
}

#[test]
fn transaction_boundaries_inside_a_stream() {
    for f in [
        stream_start_fixture(),
        begin_fixture(),
        commit_fixture(),
        stream_commit_fixture(),
        stream_abort_fixture(),
    ] {
        let mut d = decoder(true);
        let err = d.decode(Bytes::from(f.bytes)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::StreamState {
                message: f.name,
                in_stream: true
            }
        );
        assert!(d.in_stream);
    }
}

#[test]
fn stream_xid_is_read_only_inside_a_stream() {
    // The same bytes mean different things depending on the state; outside a stream the xid
    // would be taken for the relation OID.
    let bytes = Bytes::from([b"I", &STREAM_XID[..], &INVOICE_OID, b"N\0\0"].concat());
    let Ok(Message::Insert(inside)) = decoder(true).decode(bytes.clone()) else {
        panic!("should decode inside a stream");
    };
    assert_eq!((inside.xid, inside.relation), (Some(1234), 16385));
    assert!(decoder(false).decode(bytes).is_err());
}

#[test]
fn trailing_bytes_are_ignored() {
    for f in all_fixtures() {
        let longer = [&f.bytes[..], b"future field"].concat();
        assert_eq!(
            decoder(f.in_stream).decode(Bytes::from(longer)),
            Ok(f.message),
            "{}",
            f.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Test-only encoder and properties
// ---------------------------------------------------------------------------------------------

/// Writes `msg` as Postgres would; `in_stream` says whether to write the stream xid.
fn encode(msg: &Message, in_stream: bool) -> Vec<u8> {
    let mut w = Writer(Vec::new(), in_stream);
    match msg {
        Message::Begin(m) => {
            w.tag(b'B');
            w.lsn(m.final_lsn);
            w.i64(m.commit_time);
            w.u32(m.xid);
        }
        Message::Commit(m) => {
            w.tag(b'C');
            w.u8(m.flags);
            w.lsn(m.commit_lsn);
            w.lsn(m.end_lsn);
            w.i64(m.commit_time);
        }
        Message::Origin(m) => {
            w.tag(b'O');
            w.lsn(m.commit_lsn);
            w.cstr(&m.name);
        }
        Message::Relation(m) => {
            w.tag(b'R');
            w.xid(m.xid);
            w.u32(m.oid);
            w.cstr(&m.namespace);
            w.cstr(&m.name);
            w.u8(match m.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            });
            w.i16(m.columns.len());
            for c in &m.columns {
                w.u8(u8::from(c.is_key));
                w.cstr(&c.name);
                w.u32(c.type_oid);
                w.0.extend(c.type_modifier.to_be_bytes());
            }
        }
        Message::Type(m) => {
            w.tag(b'Y');
            w.xid(m.xid);
            w.u32(m.oid);
            w.cstr(&m.namespace);
            w.cstr(&m.name);
        }
        Message::Insert(m) => {
            w.tag(b'I');
            w.xid(m.xid);
            w.u32(m.relation);
            w.u8(b'N');
            w.tuple(&m.new);
        }
        Message::Update(m) => {
            w.tag(b'U');
            w.xid(m.xid);
            w.u32(m.relation);
            if let Some(old) = &m.old {
                w.old_tuple(old);
            }
            w.u8(b'N');
            w.tuple(&m.new);
        }
        Message::Delete(m) => {
            w.tag(b'D');
            w.xid(m.xid);
            w.u32(m.relation);
            w.old_tuple(&m.old);
        }
        Message::Truncate(m) => {
            w.tag(b'T');
            w.xid(m.xid);
            w.len32(m.relations.len());
            w.u8(u8::from(m.cascade) | (u8::from(m.restart_identity) << 1));
            for &oid in &m.relations {
                w.u32(oid);
            }
        }
        Message::Message(m) => {
            w.tag(b'M');
            w.xid(m.xid);
            w.u8(u8::from(m.transactional));
            w.lsn(m.lsn);
            w.cstr(&m.prefix);
            w.len32(m.content.len());
            w.0.extend_from_slice(&m.content);
        }
        Message::StreamStart(m) => {
            w.tag(b'S');
            w.u32(m.xid);
            w.u8(u8::from(m.first_segment));
        }
        Message::StreamStop => w.tag(b'E'),
        Message::StreamCommit(m) => {
            w.tag(b'c');
            w.u32(m.xid);
            w.u8(m.flags);
            w.lsn(m.commit_lsn);
            w.lsn(m.end_lsn);
            w.i64(m.commit_time);
        }
        Message::StreamAbort(m) => {
            w.tag(b'A');
            w.u32(m.xid);
            w.u32(m.subxid);
        }
    }
    w.0
}

/// Output buffer, and whether stream xids are written.
struct Writer(Vec<u8>, bool);

impl Writer {
    fn tag(&mut self, tag: u8) {
        self.0.push(tag);
    }

    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn i16(&mut self, n: usize) {
        self.0
            .extend(i16::try_from(n).expect("count fits Int16").to_be_bytes());
    }

    fn len32(&mut self, n: usize) {
        self.0
            .extend(i32::try_from(n).expect("length fits Int32").to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.0.extend(v.to_be_bytes());
    }

    fn i64(&mut self, v: i64) {
        self.0.extend(v.to_be_bytes());
    }

    fn lsn(&mut self, v: Lsn) {
        self.0.extend(v.0.to_be_bytes());
    }

    fn cstr(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
    }

    fn xid(&mut self, xid: Option<u32>) {
        if self.1 {
            self.u32(xid.expect("messages inside a stream carry an xid"));
        }
    }

    fn old_tuple(&mut self, old: &OldTuple) {
        let (marker, tuple) = match old {
            OldTuple::Key(t) => (b'K', t),
            OldTuple::Full(t) => (b'O', t),
        };
        self.u8(marker);
        self.tuple(tuple);
    }

    fn tuple(&mut self, t: &Tuple) {
        self.i16(t.0.len());
        for d in &t.0 {
            match d {
                Datum::Null => self.u8(b'n'),
                Datum::UnchangedToast => self.u8(b'u'),
                Datum::Text(b) | Datum::Binary(b) => {
                    self.u8(if matches!(d, Datum::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    self.len32(b.len());
                    self.0.extend_from_slice(b);
                }
            }
        }
    }
}

fn arb_name() -> impl Strategy<Value = String> + Clone {
    "[^\\x00]{0,12}"
}

fn arb_bytes() -> impl Strategy<Value = Bytes> + Clone {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn arb_lsn() -> impl Strategy<Value = Lsn> + Clone {
    any::<u64>().prop_map(Lsn)
}

fn arb_tuple() -> impl Strategy<Value = Tuple> + Clone {
    let datum = prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        arb_bytes().prop_map(Datum::Text),
        arb_bytes().prop_map(Datum::Binary),
    ];
    vec(datum, 0..6).prop_map(Tuple)
}

fn arb_old_tuple() -> impl Strategy<Value = OldTuple> + Clone {
    prop_oneof![
        arb_tuple().prop_map(OldTuple::Key),
        arb_tuple().prop_map(OldTuple::Full)
    ]
}

fn arb_column() -> impl Strategy<Value = RelationColumn> {
    (any::<bool>(), arb_name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| RelationColumn {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    )
}

/// Messages that may appear both inside and outside a stream block; `xid` is `Some` inside.
fn arb_anywhere<X>(xid: X) -> impl Strategy<Value = Message>
where
    X: Strategy<Value = Option<u32>> + Clone,
{
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    prop_oneof![
        (arb_lsn(), arb_name())
            .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        (
            xid.clone(),
            any::<u32>(),
            arb_name(),
            arb_name(),
            identity,
            vec(arb_column(), 0..5)
        )
            .prop_map(|(xid, oid, namespace, name, replica_identity, columns)| {
                Message::Relation(Relation {
                    xid,
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (xid.clone(), any::<u32>(), arb_name(), arb_name()).prop_map(
            |(xid, oid, namespace, name)| Message::Type(TypeInfo {
                xid,
                oid,
                namespace,
                name
            })
        ),
        (xid.clone(), any::<u32>(), arb_tuple())
            .prop_map(|(xid, relation, new)| Message::Insert(Insert { xid, relation, new })),
        (
            xid.clone(),
            any::<u32>(),
            proptest::option::of(arb_old_tuple()),
            arb_tuple()
        )
            .prop_map(|(xid, relation, old, new)| Message::Update(Update {
                xid,
                relation,
                old,
                new
            })),
        (xid.clone(), any::<u32>(), arb_old_tuple())
            .prop_map(|(xid, relation, old)| Message::Delete(Delete { xid, relation, old })),
        (
            xid.clone(),
            any::<bool>(),
            any::<bool>(),
            vec(any::<u32>(), 0..5)
        )
            .prop_map(
                |(xid, cascade, restart_identity, relations)| Message::Truncate(Truncate {
                    xid,
                    cascade,
                    restart_identity,
                    relations
                })
            ),
        (xid, any::<bool>(), arb_lsn(), arb_name(), arb_bytes()).prop_map(
            |(xid, transactional, lsn, prefix, content)| Message::Message(LogicalMessage {
                xid,
                transactional,
                lsn,
                prefix,
                content
            })
        ),
    ]
}

/// Messages that only appear between stream blocks.
fn arb_outside_only() -> impl Strategy<Value = Message> {
    prop_oneof![
        (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            })
        ),
        (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| {
            Message::StreamStart(StreamStart { xid, first_segment })
        }),
        (
            any::<u32>(),
            any::<u8>(),
            arb_lsn(),
            arb_lsn(),
            any::<i64>()
        )
            .prop_map(|(xid, flags, commit_lsn, end_lsn, commit_time)| {
                Message::StreamCommit(StreamCommit {
                    xid,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(xid, subxid)| Message::StreamAbort(StreamAbort { xid, subxid })),
    ]
}

/// A message with the stream state it is valid in.
fn arb_message() -> impl Strategy<Value = (bool, Message)> {
    prop_oneof![
        arb_anywhere(Just(None)).prop_map(|m| (false, m)),
        arb_anywhere(any::<u32>().prop_map(Some)).prop_map(|m| (true, m)),
        arb_outside_only().prop_map(|m| (false, m)),
        Just((true, Message::StreamStop)),
    ]
}

proptest! {
    #[test]
    fn round_trips((in_stream, msg) in arb_message()) {
        let mut d = decoder(in_stream);
        prop_assert_eq!(d.decode(Bytes::from(encode(&msg, in_stream))), Ok(msg.clone()));
        let expected_state = match msg {
            Message::StreamStart(_) => true,
            Message::StreamStop => false,
            _ => in_stream,
        };
        prop_assert_eq!(d.in_stream, expected_state);
    }

    #[test]
    fn every_strict_prefix_is_an_error((in_stream, msg) in arb_message()) {
        let bytes = Bytes::from(encode(&msg, in_stream));
        for len in 0..bytes.len() {
            let mut d = decoder(in_stream);
            prop_assert!(d.decode(bytes.slice(..len)).is_err(), "prefix of {} bytes", len);
            prop_assert_eq!(d.in_stream, in_stream);
        }
    }

    #[test]
    fn ignores_trailing_bytes((in_stream, msg) in arb_message(), tail in vec(any::<u8>(), 1..16)) {
        let bytes = [encode(&msg, in_stream), tail].concat();
        prop_assert_eq!(decoder(in_stream).decode(Bytes::from(bytes)), Ok(msg));
    }

    #[test]
    fn random_bytes_never_panic(in_stream: bool, bytes in vec(any::<u8>(), 0..64)) {
        let _ = decoder(in_stream).decode(Bytes::from(bytes));
    }

    #[test]
    fn random_bodies_after_valid_tags_never_panic(
        in_stream: bool,
        tag in proptest::sample::select(b"BMCORYIUDTSEcA".to_vec()),
        body in vec(any::<u8>(), 0..64),
    ) {
        let bytes = [&[tag][..], &body].concat();
        let _ = decoder(in_stream).decode(Bytes::from(bytes));
    }

    #[test]
    fn corrupted_messages_never_panic(
        (in_stream, msg) in arb_message(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode(&msg, in_stream);
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = decoder(in_stream).decode(Bytes::from(bytes));
    }
}
