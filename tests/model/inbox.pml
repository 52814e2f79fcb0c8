/*
 * inbox.pml — the cross-thread inbox's wake-up and close protocols
 * (lib/inbox.c, lib/mpsc.h), checked by spin for
 *   1. no lost wake-up: the loop never sleeps forever while a call waits
 *      (spin's invalid-end-state check: a loop blocked in `wait` with
 *      producers finished is a deadlock);
 *   2. exactly once: every call accepted before close runs, once, in order
 *      per producer (the assertions in `loop`).
 *
 * How it maps to the C code:
 *   back (a count of exchanges)   mpsc.h: exchange(&q->back, n), seq_cst
 *   linked[i]                     mpsc.h: store(&prev->next, n), release
 *   front                         mpsc.h: q->front, consumer only; a node is
 *                                 poppable once it is linked, in order
 *   sleeping                      inbox.c: ib->sleeping
 *   efd                           the eventfd's counter; the loop's wait is the
 *                                 always-armed read in the ring, which returns
 *                                 at once if the counter is already non-zero
 *   state / closed                inbox.c: ib->state, producers inside a push
 *                                 and CLOSED_BIT
 *   last                          inbox.c: the drain's snapshot of `back`; the
 *                                 drain may also stop before it (its budget, or
 *                                 a node held when the ready FIFO cannot grow)
 * spin interleaves statements with sequential consistency.  That is exact
 * for the two Dekker pairs (exchange(back) then load(sleeping) against
 * store(sleeping) then load(back); fetch_add(state) then the closed bit
 * against fetch_or(closed) then load(state)), which the C code does with
 * seq_cst operations.  Compile with -DBROKEN to drop the loop's re-check of
 * the queue after announcing sleep: spin must then find the lost wake-up
 * (tests/model/check.sh runs both).
 */

#define NPROD  2
#define NCALLS 2
#define TOTAL  (NPROD * NCALLS)

byte back = 0;              /* nodes exchanged into the queue */
bool linked[TOTAL + 1];     /* node i is reachable from node i - 1 */
byte owner[TOTAL + 1];      /* which producer pushed node i */
byte seqno[TOTAL + 1];      /* and its sequence number */
byte front = 0;             /* nodes the loop has popped */
byte ran[NPROD];            /* calls run, per producer */
byte accepted[NPROD];       /* calls that returned 0, per producer */
bit sleeping = 0;
bit efd = 0;
byte state = 0;             /* producers inside urio_call_soon_threadsafe */
bit closed = 0;
bit loop_done = 0;

/* Runs node front + 1: in order per producer, exactly once. */
inline run_next() {
    front++;
    assert(seqno[front] == ran[owner[front]]);
    ran[owner[front]]++
}

proctype producer(byte id) {
    byte i = 0, my;
    bit woke;
    do
    :: i < NCALLS ->
        state++;                                   /* fetch_add(state, 1) */
        if
        :: closed -> state--; break                /* -ESHUTDOWN */
        :: else -> skip
        fi;
        atomic { back++; my = back; owner[my] = id; seqno[my] = i };   /* exchange(back) */
        linked[my] = 1;                            /* prev->next = node */
        if                                         /* wake(): load, then exchange */
        :: sleeping ->
            atomic { woke = sleeping; sleeping = 0 };
            if
            :: woke -> efd = 1                     /* write(eventfd) */
            :: else -> skip
            fi
        :: else -> skip
        fi;
        accepted[id]++;
        state--;                                   /* producer_leave */
        i++
    :: else -> break
    od
}

active proctype loop() {
    byte last;
    do
    :: loop_done -> break
    :: else ->
        /* step 4: drain what is linked, up to what was queued when the drain
           began (inbox.c's `last` snapshot), or less (the budget, or a
           ready FIFO that cannot grow: the node is held for the next turn) */
        last = back;
        do
        :: front < last && linked[front + 1] -> run_next()
        :: front < last && linked[front + 1] -> break      /* stopped early: held, or budget */
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
                atomic { efd == 1 -> efd = 0 };      /* wait in the kernel */
                sleeping = 0
#ifndef BROKEN
            fi
#endif
        :: front == back && front < TOTAL ->
            loop_done = 1                            /* or the program closes the loop now */
        fi
    od;
    /* urio_loop_close: set the bit, wait out producers, run what was accepted */
    closed = 1;
    (state == 0);
    do
    :: front < back -> (linked[front + 1]); run_next()
    :: else -> break
    od
}

/* After everyone is done: accepted == ran, per producer. */
active proctype check() {
    (loop_done && closed && state == 0 && front == back && timeout);
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
