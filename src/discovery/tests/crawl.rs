//! The directory server and the crawler: answers, refusals, whom is asked and when.

use super::*;

#[test]
fn crawler_asks_contested_gateways_first() {
    let mut rng = rng();
    let now = Instant::now();
    let mut client = store_of(20);
    let squat = claim(90, onion(5), &["203.0.113.90"], NOW + 10);
    assert_eq!(
        client.insert(&squat, NOW, Source::Peer(PEER)),
        Ok(Inserted::Contender)
    );
    let mut crawler = Crawler::new(usize::MAX, 64, Duration::from_secs(5));
    assert_eq!(crawler.next_query(now, &mut rng, &client), Some(onion(5)));
    let mut gateway = Store::default();
    gateway.insert(&gw(5), NOW, Source::Own).unwrap();
    let progress = exchange(&mut crawler, onion(5), &gateway, &mut client, &mut rng);
    assert_eq!(progress[0], Progress::Descriptor(Err(Rejected::Duplicate)));
    assert_eq!(client.contested().count(), 0);
    // A gateway asked before it was contested is asked once more; an answer
    // that does not settle the contest does not bring it back again.
    let asked = crawler.next_query(now, &mut rng, &client).unwrap();
    let held = client.get(&asked).unwrap().descriptor().identity;
    assert_ne!(held, identity(91).signing_key().verifying_key().to_bytes());
    let contest = claim(91, asked, &["203.0.113.91"], NOW + 10);
    assert_eq!(
        client.insert(&contest, NOW, Source::Peer(PEER)),
        Ok(Inserted::Contender)
    );
    assert!(crawler.on_failed(&asked));
    assert_eq!(crawler.next_query(now, &mut rng, &client), Some(asked));
    assert!(crawler.on_failed(&asked));
    assert_ne!(crawler.next_query(now, &mut rng, &client), Some(asked));
    assert_eq!(client.contested().count(), 1);
}

#[test]
fn server_answers_own_first_then_a_sample() {
    let mut store = store_of(100);
    store.insert(&gw(1000), NOW, Source::Own).unwrap();
    let mut server = Server::new(true, 100);
    let mut rng = rng();
    let now = Instant::now();
    for max in [1, 5, 64] {
        let mut out = Vec::new();
        let reply = server.handle(
            now,
            &mut rng,
            &store,
            &mut Session::default(),
            &get(max),
            &mut out,
        );
        assert_eq!(reply, Reply::Answered { sent: max });
        assert_eq!(out.len(), usize::from(max) + 1);
        assert!(out
            .iter()
            .all(|p| p.len() <= crate::proto::wire::MAX_PAYLOAD));
        assert_eq!(out[0], Message::Desc(&gw(1000)).to_vec());
        let descs: HashSet<&[u8]> = out[..usize::from(max)]
            .iter()
            .map(|p| match Message::parse(p) {
                Ok(Message::Desc(d)) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(descs.len(), usize::from(max));
        assert_eq!(
            Message::parse(out.last().unwrap()),
            Ok(Message::End { sent: max })
        );
    }
    // A small store is sent whole.
    let small = store_of(3);
    let mut out = Vec::new();
    let reply = server.handle(
        now,
        &mut rng,
        &small,
        &mut Session::default(),
        &get(64),
        &mut out,
    );
    assert_eq!(reply, Reply::Answered { sent: 3 });
    assert_eq!(out.len(), 4);
    let mut out = Vec::new();
    let reply = server.handle(
        now,
        &mut rng,
        &Store::default(),
        &mut Session::default(),
        &get(64),
        &mut out,
    );
    assert_eq!(reply, Reply::Answered { sent: 0 });
    assert_eq!(out, vec![vec![0x03, 0x00]]);
    assert_eq!(server.stats().answered, 5);
    assert_eq!(server.stats().descriptors_sent, 1 + 5 + 64 + 3);
}

#[test]
fn server_refusals() {
    let store = store_of(5);
    let mut rng = rng();
    let now = Instant::now();
    let refused = vec![vec![0x04]];

    let mut closed = Server::new(false, 100);
    let mut out = Vec::new();
    let reply = closed.handle(
        now,
        &mut rng,
        &store,
        &mut Session::default(),
        &get(8),
        &mut out,
    );
    assert_eq!(reply, Reply::Refused(RefuseReason::NotSharing));
    assert_eq!(
        out, refused,
        "a store without an own descriptor: Refused alone"
    );
    let mut own_store = Store::default();
    own_store.insert(&gw(0), NOW, Source::Own).unwrap();
    let mut out = Vec::new();
    Server::new(false, 100).handle(
        now,
        &mut rng,
        &own_store,
        &mut Session::default(),
        &get(8),
        &mut out,
    );
    assert_eq!(
        out,
        vec![Message::Desc(&gw(0)).to_vec(), vec![0x04]],
        "own descriptor, then Refused"
    );

    // One Get per circuit.
    let mut server = Server::new(true, 100);
    let mut session = Session::default();
    let mut out = Vec::new();
    server.handle(now, &mut rng, &store, &mut session, &get(8), &mut out);
    let mut out = Vec::new();
    let reply = server.handle(now, &mut rng, &store, &mut session, &get(8), &mut out);
    assert_eq!(reply, Reply::Refused(RefuseReason::CircuitQuota));
    assert_eq!(out, refused);

    // The global rate: 2 per second with one second of burst.
    let mut server = Server::new(true, 2);
    let mut answer = |at: Instant| {
        let mut out = Vec::new();
        server.handle(
            at,
            &mut rng,
            &store,
            &mut Session::default(),
            &get(8),
            &mut out,
        )
    };
    assert_eq!(answer(now), Reply::Answered { sent: 5 });
    assert_eq!(answer(now), Reply::Answered { sent: 5 });
    assert_eq!(answer(now), Reply::Refused(RefuseReason::Busy));
    assert_eq!(
        answer(now + Duration::from_millis(499)),
        Reply::Refused(RefuseReason::Busy)
    );
    assert_eq!(
        answer(now + Duration::from_millis(500)),
        Reply::Answered { sent: 5 }
    );
    assert_eq!(
        answer(now + Duration::from_secs(10)),
        Reply::Answered { sent: 5 }
    );
    assert_eq!(
        answer(now + Duration::from_secs(10)),
        Reply::Answered { sent: 5 }
    );
    assert_eq!(
        answer(now + Duration::from_secs(10)),
        Reply::Refused(RefuseReason::Busy)
    );
    assert_eq!(server.stats().refused_busy, 3);

    let mut silent = Server::new(true, 0);
    let mut out = Vec::new();
    let reply = silent.handle(
        now,
        &mut rng,
        &store,
        &mut Session::default(),
        &get(8),
        &mut out,
    );
    assert_eq!(reply, Reply::Refused(RefuseReason::Busy));

    // Anything but a Get is ignored without an answer.
    let mut server = Server::new(true, 100);
    for request in [
        vec![],
        vec![0x01, 0x00],
        vec![0x03, 0x01],
        vec![0x04],
        vec![0x09],
    ] {
        let mut out = Vec::new();
        let reply = server.handle(
            now,
            &mut rng,
            &store,
            &mut Session::default(),
            &request,
            &mut out,
        );
        assert_eq!(reply, Reply::Ignored);
        assert!(out.is_empty());
    }
    assert_eq!(server.stats().ignored, 5);
}

#[test]
fn crawler_asks_bootstrap_first_then_everyone_once() {
    let mut rng = rng();
    let now = Instant::now();
    // Gateway g knows everyone; the client starts from gateways 1 and 2 and holds
    // its own descriptor 0.
    let mut everyone = store_of(30);
    let mut client = Store::default();
    client.insert(&gw(0), NOW, Source::Own).unwrap();
    client.insert(&gw(1), NOW, Source::Bootstrap).unwrap();
    client.insert(&gw(2), NOW, Source::Bootstrap).unwrap();
    everyone.insert(&gw(99), NOW, Source::Own).unwrap();

    let mut crawler = Crawler::new(usize::MAX, 8, Duration::from_secs(5)).with_parallel(2);
    assert_eq!(crawler.request(), vec![0x01, 0x08]);
    let first = crawler.next_query(now, &mut rng, &client).unwrap();
    let second = crawler.next_query(now, &mut rng, &client).unwrap();
    let mut firsts = [first, second];
    firsts.sort_unstable();
    let mut boot = [onion(1), onion(2)];
    boot.sort_unstable();
    assert_eq!(firsts, boot);
    // Two open queries: no third.
    assert_eq!(crawler.next_query(now, &mut rng, &client), None);
    assert_eq!(crawler.pending(), 2);

    let progress = exchange(&mut crawler, first, &everyone, &mut client, &mut rng);
    assert_eq!(progress.len(), 9);
    assert_eq!(
        progress.last(),
        Some(&Progress::Answered {
            sent: 8,
            received: 8
        })
    );
    assert!(matches!(
        progress[0],
        Progress::Descriptor(Ok(Inserted::New))
    ));
    assert_eq!(crawler.stats().answered, 1);
    assert!(crawler.on_failed(&second));
    assert!(!crawler.on_failed(&second));

    let mut asked = HashSet::from([first, second]);
    while !crawler.done(&client) {
        let Some(key) = crawler.next_query(now, &mut rng, &client) else {
            panic!("not done but nothing to ask");
        };
        assert!(asked.insert(key), "asked twice");
        assert_ne!(key, onion(0), "asked itself");
        exchange(&mut crawler, key, &everyone, &mut client, &mut rng);
    }
    // Everyone known was asked once, itself excepted.
    assert_eq!(asked.len(), client.len() - 1);
    assert_eq!(client.len(), 31);
    let stats = crawler.stats();
    assert_eq!(stats.queries, 30);
    assert_eq!(stats.answered, 29);
    assert_eq!(stats.unreachable, 1);
    assert_eq!(stats.descriptors, 29 * 8);
    assert_eq!(stats.accepted, 28);
    assert!(stats.bytes_received > 29 * 8 * 158);
    assert_eq!(crawler.next_query(now, &mut rng, &client), None);
}

#[test]
fn crawler_target_budget_and_gossip() {
    let mut rng = rng();
    let now = Instant::now();
    let store = store_of(10);
    let mut crawler = Crawler::new(10, 64, Duration::from_secs(5));
    assert!(crawler.done(&store));
    assert_eq!(crawler.next_query(now, &mut rng, &store), None);

    let mut gossip = Crawler::gossip(Duration::from_secs(5));
    assert_eq!(gossip.request(), vec![0x01, 0x40]);
    let mut asked = Vec::new();
    for _ in 0..GOSSIP_PEERS {
        asked.push(gossip.next_query(now, &mut rng, &store).unwrap());
        gossip.on_failed(asked.last().unwrap());
    }
    assert_eq!(gossip.next_query(now, &mut rng, &store), None);
    assert!(gossip.done(&store));
    assert_eq!(asked.iter().collect::<HashSet<_>>().len(), 3);
    // Gossip gives bootstrap gateways no preference: over many rounds the peers
    // asked are spread over the store.
    let mut seen = HashSet::new();
    for _ in 0..100 {
        let mut round = Crawler::gossip(Duration::from_secs(5));
        while let Some(key) = round.next_query(now, &mut rng, &store) {
            seen.insert(key);
        }
    }
    assert_eq!(seen.len(), 10);
    assert_eq!(
        Crawler::new(5, 0, Duration::ZERO).request(),
        vec![0x01, 0x01]
    );
    assert_eq!(
        Crawler::new(5, 200, Duration::ZERO).request(),
        vec![0x01, 0x40]
    );
}

#[test]
fn crawler_refusal_timeout_and_violations() {
    let mut rng = rng();
    let t0 = Instant::now();
    let mut client = store_of(6);
    let timeout = Duration::from_secs(5);
    let mut crawler = Crawler::new(usize::MAX, 2, timeout).with_parallel(6);
    let keys: Vec<[u8; 32]> = (0..6)
        .map(|i| {
            crawler
                .next_query(t0 + Duration::from_secs(i), &mut rng, &client)
                .unwrap()
        })
        .collect();
    assert_eq!(crawler.poll_timeout(), Some(t0 + timeout));
    let d = gw(50);

    assert_eq!(
        crawler.on_payload(&keys[0], &[0x04], &mut client, NOW),
        Progress::Refused
    );
    assert_eq!(
        crawler.on_payload(&keys[0], &[0x04], &mut client, NOW),
        Progress::Ignored
    );
    assert_eq!(
        crawler.on_payload(&keys[1], &[0x07], &mut client, NOW),
        Progress::Violation
    );
    assert_eq!(
        crawler.on_payload(&keys[2], &get(3), &mut client, NOW),
        Progress::Violation
    );
    // More descriptors than asked for.
    let desc = Message::Desc(&d).to_vec();
    assert!(matches!(
        crawler.on_payload(&keys[3], &desc, &mut client, NOW),
        Progress::Descriptor(Ok(Inserted::New))
    ));
    assert_eq!(
        crawler.on_payload(&keys[3], &desc, &mut client, NOW),
        Progress::Descriptor(Err(Rejected::Duplicate))
    );
    assert_eq!(
        crawler.on_payload(&keys[3], &desc, &mut client, NOW),
        Progress::Violation
    );
    // An End announcing more than asked for.
    assert_eq!(
        crawler.on_payload(&keys[4], &[0x03, 0x03], &mut client, NOW),
        Progress::Violation
    );
    // A lost Desc: End says 2, one arrived.
    assert!(matches!(
        crawler.on_payload(&keys[5], &Message::Desc(&gw(51)).to_vec(), &mut client, NOW),
        Progress::Descriptor(Ok(Inserted::New))
    ));
    assert_eq!(crawler.pending(), 1);
    assert_eq!(
        crawler.poll_timeout(),
        Some(t0 + Duration::from_secs(5) + timeout)
    );
    assert!(crawler.on_timeout(t0 + Duration::from_secs(9)).is_empty());
    assert_eq!(
        crawler.on_timeout(t0 + Duration::from_secs(10)),
        vec![keys[5]]
    );
    assert_eq!(crawler.poll_timeout(), None);
    assert_eq!(
        crawler.on_payload(&keys[5], &[0x03, 0x02], &mut client, NOW),
        Progress::Ignored
    );
    let stats = crawler.stats();
    assert_eq!(
        (
            stats.refused,
            stats.violations,
            stats.timed_out,
            stats.answered
        ),
        (1, 4, 1, 0)
    );
    assert_eq!(stats.descriptors, 3);
    assert_eq!(stats.accepted, 2);
}

#[test]
fn crawler_reclaims_a_squatted_gateway_by_asking_it() {
    let mut rng = rng();
    let now = Instant::now();
    // The client learned a claim on gateway 1's key by identity 9, at gateway 1's
    // real address (so the circuit reaches gateway 1).
    let mut client = Store::default();
    let squat = claim(9, onion(1), &[&addr(1)], NOW + 10);
    client.insert(&squat, NOW, Source::Peer(PEER)).unwrap();
    let mut gateway = Store::default();
    gateway.insert(&gw(1), NOW, Source::Own).unwrap();
    let mut crawler = Crawler::new(usize::MAX, 64, Duration::from_secs(5));
    let key = crawler.next_query(now, &mut rng, &client).unwrap();
    assert_eq!(key, onion(1));
    let progress = exchange(&mut crawler, key, &gateway, &mut client, &mut rng);
    assert_eq!(progress[0], Progress::Descriptor(Ok(Inserted::Reclaimed)));
    assert_eq!(client.get(&onion(1)).unwrap().bytes(), &gw(1)[..]);
}

#[test]
fn crawler_asks_a_bootstrap_gateway_known_only_by_key() {
    let mut rng = rng();
    let now = Instant::now();
    let mut client = Store::default();
    let mut gateway = Store::default();
    gateway.insert(&gw(1), NOW, Source::Own).unwrap();
    gateway.insert(&gw(2), NOW, Source::Bootstrap).unwrap();
    let mut crawler = Crawler::new(usize::MAX, 64, Duration::from_secs(5));
    crawler.ask(now, onion(1));
    assert_eq!(crawler.pending(), 1);
    let progress = exchange(&mut crawler, onion(1), &gateway, &mut client, &mut rng);
    assert!(matches!(
        progress.last(),
        Some(Progress::Answered {
            sent: 2,
            received: 2
        })
    ));
    // Its own descriptor came over the authenticated circuit: held as proven.
    assert_eq!(
        client.get(&onion(1)).unwrap().source(),
        Source::Peer(onion(1))
    );
    assert_eq!(client.len(), 2);
    // Asked once: the crawler does not pick it again.
    assert_ne!(crawler.next_query(now, &mut rng, &client), Some(onion(1)));
}

#[test]
fn server_stores_published_descriptors_within_its_rate() {
    let now = Instant::now();
    let mut store = Store::default();
    let mut server = Server::new(true, 2);
    assert!(
        !server.publish(now, &mut store, &get(8), NOW),
        "a Get is not a Publish"
    );
    for seed in 1..=3 {
        let msg = Message::Publish(&gw(seed)).to_vec();
        assert!(server.publish(now, &mut store, &msg, NOW));
    }
    assert_eq!(store.len(), 2, "the third exceeds 2 per second");
    assert_eq!(store.get(&onion(1)).unwrap().source(), Source::Bootstrap);
    assert_eq!(
        (server.stats().published, server.stats().published_dropped),
        (2, 1)
    );
    let forged = Message::Publish(&[0x11; MIN_DESCRIPTOR_LEN]).to_vec();
    assert!(server.publish(now + Duration::from_secs(1), &mut store, &forged, NOW));
    assert_eq!(store.len(), 2, "an invalid descriptor is dropped");
}
