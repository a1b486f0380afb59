/*
 * keeper.h - keep paho.mqtt.c's receive thread alive and awake, so that
 * MQTTClient_connect takes ~20 ms instead of ~210 ms and the last close
 * takes ~0.1 ms instead of ~100 ms.  See keeper.c for the why.
 *
 * Plain C: no Python API (callable without the GIL, from any thread).
 */
#ifndef SB_KEEPER_H
#define SB_KEEPER_H

/* Once per process (idempotent, thread-safe): start an in-process dummy
 * MQTT server on 127.0.0.1 and connect one extra paho handle to it, never
 * disconnected, so paho's receive thread never stops.  Re-creates the keeper
 * if its connection dropped.  0 when the keeper is up, -1 otherwise; -1 is
 * harmless (connects are just slow again) and is not retried for a while.
 * Calls paho: call without the GIL.  The first call costs ~150 ms (paho's
 * receive-thread start-up), later ones an atomic load. */
int sb_keeper_ensure_nogil(void);

/* Bracket a MQTTClient_connect/connect5: while at least one bracket is open
 * a helper thread writes a PINGRESP to the keeper connection every 1 ms, so
 * paho's poll() returns and sees the new socket's connect completion at once
 * instead of after its 100 ms poll timeout.  Reference-counted, never blocks
 * for long, safe to call when the keeper is not up (then a no-op). */
void sb_keeper_wake_begin_nogil(void);
void sb_keeper_wake_end_nogil(void);

/* Wait until paho's receive thread has finished everything it was doing
 * when this was called: a PUBLISH is written to the keeper's connection and
 * we wait (at most timeout_s) for the keeper's messageArrived, which that
 * single thread runs only after the work in hand, the tail of any callback
 * it was in included.  paho goes on using a handle after our callback
 * returns (with its mutex released during the call), so a handle may be
 * destroyed only after a fence.  0 when passed, -1 when the keeper is not up
 * or the time ran out.  Call without the GIL. */
int sb_keeper_fence_nogil(double timeout_s);

/* Before fork(), when no connection of the application is open: disconnect
 * and destroy the keeper so that paho's receive thread stops (~100 ms) and
 * the child inherits an idle paho that it may use.  The next ensure()
 * re-creates the keeper.  Calls paho: call without the GIL. */
void sb_keeper_park_nogil(void);

/* 1 while the keeper holds paho's receive thread running: a fork() now
 * leaves the child a paho whose thread is gone (see sb_keeper_park_nogil). */
int sb_keeper_active(void);

/* In a forked child: forget the parent's keeper without touching paho (its
 * threads are gone and its locks may be held); closes the inherited server
 * side descriptors; every keeper call is a no-op from then on.  Registered
 * with pthread_atfork by the first ensure(); calling it again is harmless. */
void sb_keeper_after_fork_child(void);

#endif /* SB_KEEPER_H */
