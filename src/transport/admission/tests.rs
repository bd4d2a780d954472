use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::*;

fn admission(connections: usize, per_listener: usize, per_address: usize) -> Arc<Admission> {
    Admission::new(
        Limits {
            connections,
            unidentified_per_listener: per_listener,
            unidentified_per_address: per_address,
            handshakes_per_listener: 2,
        },
        Arc::new(Metrics::unexported()),
    )
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn shed_count(admission: &Admission, front: Front, reason: ShedReason) -> u64 {
    admission
        .metrics
        .connections_shed
        .with_label_values(&[front.label(), reason.label()])
        .get()
}

fn gauge(admission: &Admission, front: Front, state: State) -> i64 {
    admission
        .metrics
        .connections
        .with_label_values(&[front.label(), state.label()])
        .get()
}

#[test]
fn a_full_budget_sheds_the_oldest_idle_connection_before_any_other() {
    let admission = admission(3, 100, 0);
    let unidentified = admission.admit(Front::Https, ip(2)).unwrap();
    unidentified.advance(State::Unidentified);
    let oldest_idle = admission.admit(Front::Dips, ip(3)).unwrap();
    let newer_idle = admission.admit(Front::Https, ip(4)).unwrap();

    let newcomer = admission.admit(Front::Https, ip(1)).unwrap();

    assert!(
        oldest_idle.is_shed(),
        "the oldest idle connection makes room"
    );
    assert!(!unidentified.is_shed() && !newer_idle.is_shed() && !newcomer.is_shed());
    assert_eq!(
        shed_count(&admission, Front::Dips, ShedReason::Descriptors),
        1
    );
    // The shed connection still holds its descriptor until its task drops it.
    assert_eq!(admission.open(), 4);
    drop(oldest_idle);
    assert_eq!(admission.open(), 3);
}

#[test]
fn identified_connections_are_never_shed_and_a_newcomer_is_refused_instead() {
    let admission = admission(2, 100, 0);
    let first = admission.admit(Front::Dips, ip(1)).unwrap();
    first.advance(State::Handshake);
    first.advance(State::Identified);
    let second = admission.admit(Front::Https, ip(1)).unwrap();
    second.advance(State::Handshake);
    second.advance(State::Identified);

    assert_eq!(
        admission.admit(Front::Https, ip(9)).err(),
        Some(ShedReason::Descriptors)
    );
    assert!(!first.is_shed() && !second.is_shed());
    assert_eq!(gauge(&admission, Front::Https, State::Identified), 1);
}

#[test]
fn the_shed_order_is_idle_then_unidentified_then_handshake() {
    let admission = admission(3, 100, 0);
    let handshake = admission.admit(Front::Https, ip(2)).unwrap();
    handshake.advance(State::Handshake);
    let unidentified = admission.admit(Front::Https, ip(3)).unwrap();
    unidentified.advance(State::Unidentified);
    let idle = admission.admit(Front::Https, ip(4)).unwrap();

    let a = admission.admit(Front::Https, ip(5)).unwrap();
    assert!(idle.is_shed() && !unidentified.is_shed() && !handshake.is_shed());
    a.advance(State::Identified);
    drop(idle);
    let b = admission.admit(Front::Https, ip(6)).unwrap();
    assert!(unidentified.is_shed() && !handshake.is_shed());
    b.advance(State::Identified);
    drop(unidentified);
    let _c = admission.admit(Front::Https, ip(7)).unwrap();
    assert!(handshake.is_shed());
}

#[test]
fn a_listener_full_of_unidentified_connections_sheds_only_its_own_unidentified_first() {
    let admission = admission(100, 2, 0);
    let other_listener = admission.admit(Front::Dips, ip(2)).unwrap();
    other_listener.advance(State::Handshake);
    let handshake = admission.admit(Front::Https, ip(3)).unwrap();
    handshake.advance(State::Handshake);
    let unidentified = admission.admit(Front::Https, ip(4)).unwrap();
    unidentified.advance(State::Handshake);
    unidentified.advance(State::Unidentified);

    let newcomer = admission.admit(Front::Https, ip(5)).unwrap();
    assert!(
        !unidentified.is_shed(),
        "an idle newcomer does not count yet"
    );
    newcomer.advance(State::Handshake);

    assert!(unidentified.is_shed() && !handshake.is_shed() && !other_listener.is_shed());
    let next = admission.admit(Front::Https, ip(6)).unwrap();
    next.advance(State::Handshake);
    assert!(handshake.is_shed() && !newcomer.is_shed());
    assert_eq!(
        shed_count(&admission, Front::Https, ShedReason::UnidentifiedLimit),
        2
    );
}

#[test]
fn idle_connections_are_bounded_by_the_budget_alone() {
    let admission = admission(100, 2, 0);
    let idle: Vec<Ticket> = (0..50)
        .map(|_| admission.admit(Front::Https, ip(2)).unwrap())
        .collect();
    assert!(idle.iter().all(|ticket| !ticket.is_shed()));
    assert_eq!(gauge(&admission, Front::Https, State::Idle), 50);
}

#[tokio::test]
async fn accepting_pauses_while_shed_connections_have_not_closed() {
    let admission = admission(1, 100, 0);
    let mut shed = vec![admission.admit(Front::Https, ip(1)).unwrap()];
    for _ in 0..SHED_BACKLOG {
        shed.push(admission.admit(Front::Https, ip(1)).unwrap());
    }
    let newest = shed.pop().unwrap();
    assert!(shed.iter().all(Ticket::is_shed) && !newest.is_shed());
    assert_eq!(admission.open(), SHED_BACKLOG + 1);

    let room = {
        let admission = admission.clone();
        tokio::spawn(async move { admission.room().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !room.is_finished(),
        "{SHED_BACKLOG} shed connections still hold descriptors"
    );
    shed.pop();
    tokio::time::timeout(Duration::from_secs(5), room)
        .await
        .expect("one of them closing makes room")
        .unwrap();
}

#[test]
fn the_per_address_cap_counts_unidentified_connections_only() {
    let admission = admission(100, 100, 2);
    let unidentified: Vec<Ticket> = (0..2)
        .map(|_| {
            let ticket = admission.admit(Front::Https, ip(2)).unwrap();
            ticket.advance(State::Handshake);
            ticket.advance(State::Unidentified);
            ticket
        })
        .collect();
    assert_eq!(
        admission.admit(Front::Https, ip(2)).err(),
        Some(ShedReason::AddressLimit)
    );
    // Another address is not affected.
    let _other = admission.admit(Front::Https, ip(3)).unwrap();
    assert_eq!(
        shed_count(&admission, Front::Https, ShedReason::AddressLimit),
        1
    );

    // Once one of them leaves, the address may connect again, and idle or handshaking
    // connections (a burst behind one address) do not count.
    drop(unidentified);
    let burst: Vec<Ticket> = (0..10)
        .map(|_| admission.admit(Front::Https, ip(2)).unwrap())
        .collect();
    for ticket in &burst[..5] {
        ticket.advance(State::Handshake);
    }
    assert!(admission.admit(Front::Https, ip(2)).is_ok());
}

#[test]
fn gauges_follow_every_transition_and_return_to_zero() {
    let admission = admission(100, 100, 0);
    let ticket = admission.admit(Front::Metrics, ip(1)).unwrap();
    assert_eq!(gauge(&admission, Front::Metrics, State::Idle), 1);
    ticket.advance(State::Unidentified);
    assert_eq!(gauge(&admission, Front::Metrics, State::Idle), 0);
    assert_eq!(gauge(&admission, Front::Metrics, State::Unidentified), 1);
    let shed = admission.admit(Front::Metrics, ip(1)).unwrap();
    shed.shed(ShedReason::IdleTimeout);
    assert_eq!(gauge(&admission, Front::Metrics, State::Idle), 0);
    drop((ticket, shed));
    for state in State::ALL {
        assert_eq!(gauge(&admission, Front::Metrics, state), 0);
    }
    assert_eq!(admission.open(), 0);
}

#[tokio::test]
async fn closing_sheds_connections_before_their_handshake_and_refuses_new_ones() {
    let admission = admission(100, 100, 0);
    let idle = admission.admit(Front::Https, ip(1)).unwrap();
    let identified = admission.admit(Front::Dips, ip(1)).unwrap();
    identified.advance(State::Identified);
    let health_check = admission.admit(Front::Metrics, ip(1)).unwrap();

    admission.close();

    assert!(idle.is_shed() && !identified.is_shed());
    assert!(
        !health_check.is_shed(),
        "a probe connected just before the stop is answered"
    );
    assert_eq!(
        admission.admit(Front::Https, ip(1)).err(),
        Some(ShedReason::Shutdown)
    );
    drop(idle);
    let drained = {
        let admission = admission.clone();
        tokio::spawn(async move { admission.drain(Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    drop(identified);
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("the drain ends when the last connection closes")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_outlasts_its_grace_sheds_every_connection() {
    let admission = admission(100, 100, 0);
    let identified = admission.admit(Front::Dips, ip(1)).unwrap();
    identified.advance(State::Identified);
    admission.close();
    admission.drain(Duration::from_secs(1)).await;
    assert!(identified.is_shed());
}

#[test]
fn a_shed_connection_knows_why() {
    for (index, reason) in ShedReason::ALL.into_iter().enumerate() {
        assert_eq!(
            reason as usize, index,
            "ShedReason::ALL follows the declaration"
        );
    }
    let admission = admission(1, 100, 0);
    let oldest = admission.admit(Front::Https, ip(1)).unwrap();
    let _newcomer = admission.admit(Front::Https, ip(2)).unwrap();
    assert_eq!(oldest.slot.reason(), ShedReason::Descriptors);
}

#[tokio::test(start_paused = true)]
async fn addresses_that_identified_recently_have_handshake_slots_of_their_own() {
    let admission = admission(100, 100, 0);
    let earlier = admission.admit(Front::Https, ip(1)).unwrap();
    earlier.advance(State::Handshake);
    earlier.advance(State::Identified);
    drop(earlier);
    // A flood of ClientHellos from strangers holds both shared slots, and more wait.
    let strangers: Vec<Ticket> = (0..3)
        .map(|n| admission.admit(Front::Https, ip(10 + n)).unwrap())
        .collect();
    let held = [
        admission.handshake_slot(&strangers[0]).await.unwrap(),
        admission.handshake_slot(&strangers[1]).await.unwrap(),
    ];
    let waiting = tokio::time::timeout(
        Duration::from_secs(1),
        admission.handshake_slot(&strangers[2]),
    );
    assert!(waiting.await.is_err(), "a stranger waits for a shared slot");

    let returning = admission.admit(Front::Https, ip(1)).unwrap();
    let slot = tokio::time::timeout(Duration::from_secs(1), admission.handshake_slot(&returning));
    assert!(slot.await.is_ok(), "a known address does not wait");

    // An hour after its last identified connection, the address queues with everyone.
    tokio::time::advance(KNOWN_ADDRESS_TTL).await;
    let later = admission.admit(Front::Https, ip(1)).unwrap();
    let slot = tokio::time::timeout(Duration::from_secs(1), admission.handshake_slot(&later));
    assert!(slot.await.is_err());
    drop(held);
}

#[test]
fn known_addresses_are_bounded() {
    let mut known = KnownAddresses::default();
    let start = Instant::now();
    for n in 0..KNOWN_ADDRESSES_MAX as u32 {
        known.record(IpAddr::V4(Ipv4Addr::from(n)), start);
    }
    let newcomer = IpAddr::V4(Ipv4Addr::new(10, 255, 255, 255));
    known.record(newcomer, start);
    assert!(!known.contains(newcomer, start), "full: not recorded");
    assert_eq!(known.last_identified.len(), KNOWN_ADDRESSES_MAX);
    // Once the others expire, a newcomer prunes them and is recorded.
    let later = start + KNOWN_ADDRESS_TTL;
    known.record(newcomer, later);
    assert!(known.contains(newcomer, later));
    assert_eq!(known.last_identified.len(), 1);
}

#[tokio::test]
async fn a_stop_waits_for_the_serving_listeners_while_health_checks_still_connect() {
    let admission = admission(100, 100, 0);
    let scrape = admission.admit(Front::Metrics, ip(1)).unwrap();
    scrape.advance(State::Unidentified);
    admission.close();
    let probe = admission.admit(Front::Metrics, ip(1));
    assert!(probe.is_ok(), "/readyz still answers during the drain");
    assert_eq!(
        admission.admit(Front::Dips, ip(1)).err(),
        Some(ShedReason::Shutdown)
    );
    tokio::time::timeout(
        Duration::from_secs(5),
        admission.drain(Duration::from_secs(30)),
    )
    .await
    .expect("metrics connections do not hold the drain");
    drop((scrape, probe));
}
