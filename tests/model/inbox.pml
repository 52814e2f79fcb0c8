/*
 * inbox.pml — the cross-thread inbox's wake-up and close protocols
 * (lib/inbox.c, lib/mpsc.h), checked by spin for
 *   1. no lost wake-up: the loop never sleeps forever while a call waits
 *      (spin's invalid-end-state check: a loop blocked in `wait` with
 *      producers finished is a deadlock);
 *   2. exactly once: every call accepted (urio_call_soon_threadsafe returned
 *      0) runs, once, in order per producer, and no refused one runs (the
 *      assertions in `loop` and `check`);
 *   3. no write to a closed eventfd: a producer inside the wake-up path
 *      when the loop closes finishes before close closes the fd.
 *
 * How it maps to the C code:
 *   back (a count of pushes)      mpsc.h: urio__mpsc_push_open's CAS on
 *   closed                          q->back, refused when back holds the
 *                                   closed mark: both in one atomic step
 *   last                          inbox.c: urio__inbox_close's exchange of
 *                                   back for the closed mark returns it
 *   linked[i]                     mpsc.h: store(&prev->next, n), release
 *   front                         mpsc.h: q->front, consumer only; a node is
 *                                 poppable once it is linked, in order
 *   sleeping                      inbox.c: ib->sleeping (2: SLEEP_CLOSED)
 *   wakers                        inbox.c: ib->wakers, producers in wake_slow
 *   efd, efd_open                 the eventfd's counter, and whether close
 *                                 has closed it; the loop's wait is the
 *                                 always-armed read in the ring, which
 *                                 returns at once if the counter is non-zero
 *   spurious                      a timer may wake the loop once without
 *                                 the eventfd (that is what lets close run
 *                                 while a producer is inside wake_slow)
 *   snap                          inbox.c: the drain's snapshot of `back`; the
 *                                 drain may also stop before it (its budget,
 *                                 or a ready FIFO that cannot grow)
 * spin interleaves statements with sequential consistency.  That is exact
 * for the Dekker pair (CAS(back) then load(sleeping) against
 * store(sleeping) then load(back)), which the C code does with seq_cst
 * operations, and for close's store(sleeping) then load(wakers) against
 * wakers++ then CAS(sleeping).  Three deliberately broken variants must
 * fail (tests/model/check.sh runs them): -DBROKEN drops the loop's re-check
 * of the queue after announcing sleep (a lost wake-up); -DBROKEN_CLOSE lets
 * close skip waiting for producers inside the wake-up path (an eventfd
 * write after close); -DBROKEN_PUSH checks `closed` and pushes in two steps,
 * as a load and an exchange would (a call accepted after close, never run).
 */

#define NPROD  2
#define NCALLS 2
#define TOTAL  (NPROD * NCALLS)

byte back = 0;              /* nodes pushed into the queue */
bit closed = 0;             /* back holds the closed mark */
byte last = 0;              /* the newest node when the queue closed */
bool linked[TOTAL + 1];     /* node i is reachable from node i - 1 */
byte owner[TOTAL + 1];      /* which producer pushed node i */
byte seqno[TOTAL + 1];      /* and its sequence number */
byte front = 0;             /* nodes the loop has popped */
byte ran[NPROD];            /* calls run, per producer */
byte accepted[NPROD];       /* calls that returned 0, per producer */
byte sleeping = 0;          /* 0, 1 (announced), 2 (closed) */
byte wakers = 0;
bit efd = 0;
bit efd_open = 1;
bit spurious = 1;           /* one wake-up by a timer is allowed */
bit loop_done = 0;

/* Runs node front + 1: in order per producer, exactly once. */
inline run_next() {
    front++;
    assert(seqno[front] == ran[owner[front]]);
    ran[owner[front]]++
}

proctype producer(byte id) {
    byte i = 0, my;
    bit refused, woke;
    do
    :: i < NCALLS ->
#ifndef BROKEN_PUSH
        atomic {                                   /* push_open: CAS(back) unless closed */
#endif
            if
            :: closed -> refused = 1
            :: else -> refused = 0;
#ifdef BROKEN_PUSH
                /* the check and the push as two steps: close can fall between */
                atomic { back++; my = back; owner[my] = id; seqno[my] = i }
#else
                back++; my = back; owner[my] = id; seqno[my] = i
#endif
            fi
#ifndef BROKEN_PUSH
        };
#endif
        if
        :: refused -> break                        /* -ESHUTDOWN */
        :: else -> skip
        fi;
        linked[my] = 1;                            /* prev->next = node */
        if                                         /* wake(): load, then the slow path */
        :: sleeping == 1 ->
            wakers++;
            atomic {                               /* CAS(sleeping, 1 -> 0) */
                if
                :: sleeping == 1 -> sleeping = 0; woke = 1
                :: else -> woke = 0
                fi
            };
            if
            :: woke -> assert(efd_open); efd = 1   /* write(eventfd) */
            :: else -> skip
            fi;
            wakers--
        :: else -> skip
        fi;
        accepted[id]++;
        i++
    :: else -> break
    od
}

active proctype loop() {
    byte snap;
    do
    :: loop_done -> break
    :: else ->
        /* step 4: drain what is linked, up to what was queued when the drain
           began (inbox.c's `last` snapshot), or less (the budget, or a
           ready FIFO that cannot grow: the rest waits for the next turn) */
        snap = back;
        do
        :: front < snap && linked[front + 1] -> run_next()
        :: front < snap && linked[front + 1] -> break      /* stopped early */
        :: else -> break
        od;
        if
        :: front == TOTAL -> loop_done = 1          /* every call ran: the program ends */
        :: front < back -> skip                      /* a push in progress: next turn, no sleep */
        :: front == back && front < TOTAL ->
            sleeping = 1;                            /* announce */
#ifndef BROKEN
            if
            :: front < back -> sleeping = 0          /* re-check: a producer got in */
            :: else ->
#endif
                if                                   /* wait in the kernel */
                :: atomic { efd == 1 -> efd = 0 }
                :: atomic { spurious == 1 -> spurious = 0 }     /* a timer */
                fi;
                sleeping = 0
#ifndef BROKEN
            fi
#endif
        :: front == back && front < TOTAL ->
            loop_done = 1                            /* or the program closes the loop now */
        fi
    od;
    /* urio_loop_close: the close point, run what was accepted, then the eventfd */
    atomic { closed = 1; last = back };
    do
    :: front < last -> (linked[front + 1]); run_next()
    :: else -> break
    od;
    sleeping = 2;
#ifndef BROKEN_CLOSE
    (wakers == 0);
#endif
    efd_open = 0
}

/* After everyone is done: accepted == ran, per producer. */
active proctype check() {
    (loop_done && efd_open == 0 && wakers == 0 && timeout);
    byte p;
    for (p : 0 .. NPROD - 1) {
        assert(accepted[p] == ran[p])
    }
}

init {
    byte p;
    atomic {
        for (p : 0 .. NPROD - 1) {
            run producer(p)
        }
    }
}
