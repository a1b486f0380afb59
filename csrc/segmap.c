/*
 * segmap.c - a small hash map from one topic level (a byte string) to a
 * child node.  Both tries (topics.c, filtertrie.c) keep one per node, so a
 * lookup costs one hash of the level whatever the number of siblings: that
 * is what makes matching O(topic depth) instead of O(subscriptions).
 *
 * Pure C: no Python objects, no GIL needed.  Memory comes from PyMem_Raw*
 * because the callers hold their own mutex here, and PyMem_Raw* is the
 * allocator that is safe to use without relying on the GIL.
 *
 * Open addressing with linear probing, capacity a power of two, load <= 1/2,
 * and backward-shift deletion (no tombstones, so a long-lived trie that sees
 * many add/remove cycles does not degrade).  A slot is free when val == NULL.
 */
#include "sb.h"

#include <string.h>

#define SEGMAP_MIN_CAP 2

/* FNV-1a, 64 bit.  The keys are levels the application stored (templates,
 * subscription filters); topics from the network only probe, so an attacker
 * cannot choose the colliding keys. */
uint64_t
sb_seghash(const char *k, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t i;
    for (i = 0; i < len; i++) {
        h ^= (unsigned char)k[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

void *
sb_segmap_get(const sb_segmap *m, const char *k, size_t len)
{
    void *found = NULL;
    uint64_t h;
    size_t i;
    if (m->count > 0) {
        h = sb_seghash(k, len);
        for (i = (size_t)h & m->mask; m->slots[i].val != NULL; i = (i + 1) & m->mask) {
            const sb_segslot *s = &m->slots[i];
            if (s->hash == h && s->len == len && memcmp(s->key, k, len) == 0) {
                found = s->val;
                break;
            }
        }
    }
    return found;
}

/* Re-insert a slot (key already owned) into a table known to have room. */
static void
place(sb_segslot *slots, size_t mask, const sb_segslot *s)
{
    size_t i = (size_t)s->hash & mask;
    while (slots[i].val != NULL)
        i = (i + 1) & mask;
    slots[i] = *s;
}

/* Make room for `extra` more keys without further allocation.  0, or -1
 * when out of memory (the map is then unchanged). */
int
sb_segmap_reserve(sb_segmap *m, size_t extra)
{
    int rc = 0;
    size_t need = m->count + extra, cap = m->slots ? m->mask + 1 : 0, newcap, i;
    sb_segslot *ns;
    if (need * 2 > cap) {
        newcap = cap ? cap : SEGMAP_MIN_CAP;
        while (need * 2 > newcap)
            newcap *= 2;
        ns = PyMem_RawCalloc(newcap, sizeof *ns);
        if (ns == NULL) {
            rc = -1;
        }
        else {
            for (i = 0; i < cap; i++)
                if (m->slots[i].val != NULL)
                    place(ns, newcap - 1, &m->slots[i]);
            PyMem_RawFree(m->slots);
            m->slots = ns;
            m->mask = newcap - 1;
        }
    }
    return rc;
}

/* Map k -> val (val != NULL), replacing any previous value.  0, or -1 when
 * out of memory (the map is then unchanged). */
int
sb_segmap_put(sb_segmap *m, const char *k, size_t len, void *val)
{
    int rc = -1;
    uint64_t h = sb_seghash(k, len);
    size_t i;
    sb_segslot s;
    if (m->count > 0) {
        for (i = (size_t)h & m->mask; m->slots[i].val != NULL; i = (i + 1) & m->mask) {
            sb_segslot *e = &m->slots[i];
            if (e->hash == h && e->len == len && memcmp(e->key, k, len) == 0) {
                e->val = val;
                rc = 0;
                goto done;
            }
        }
    }
    if (sb_segmap_reserve(m, 1) < 0)
        goto done;
    s.key = PyMem_RawMalloc(len ? len : 1);     /* a distinct pointer even for "" */
    if (s.key == NULL)
        goto done;
    memcpy(s.key, k, len);
    s.len = len;
    s.hash = h;
    s.val = val;
    place(m->slots, m->mask, &s);
    m->count++;
    rc = 0;
done:
    return rc;
}

/* Remove k; returns its value, or NULL if it was not there. */
void *
sb_segmap_del(sb_segmap *m, const char *k, size_t len)
{
    void *val = NULL;
    uint64_t h;
    size_t i, j, home;
    if (m->count == 0)
        goto done;
    h = sb_seghash(k, len);
    for (i = (size_t)h & m->mask; m->slots[i].val != NULL; i = (i + 1) & m->mask) {
        sb_segslot *e = &m->slots[i];
        if (e->hash == h && e->len == len && memcmp(e->key, k, len) == 0)
            break;
    }
    if (m->slots[i].val == NULL)
        goto done;
    val = m->slots[i].val;
    PyMem_RawFree(m->slots[i].key);
    m->slots[i].val = NULL;
    m->slots[i].key = NULL;
    m->count--;
    /* Backward shift: pull later members of the probe run into the hole when
     * the hole lies on their way from their home slot. */
    for (j = (i + 1) & m->mask; m->slots[j].val != NULL; j = (j + 1) & m->mask) {
        home = (size_t)m->slots[j].hash & m->mask;
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->slots[i] = m->slots[j];
            m->slots[j].val = NULL;
            m->slots[j].key = NULL;
            i = j;
        }
    }
done:
    return val;
}

/* Iterate: start with *pos = 0; returns 0 when there are no more entries. */
int
sb_segmap_next(const sb_segmap *m, size_t *pos, const char **k, size_t *len, void **val)
{
    int more = 0;
    size_t cap = m->slots ? m->mask + 1 : 0;
    while (*pos < cap) {
        const sb_segslot *s = &m->slots[(*pos)++];
        if (s->val != NULL) {
            *k = s->key;
            *len = s->len;
            *val = s->val;
            more = 1;
            break;
        }
    }
    return more;
}

/* Free the keys and the table (not the values: the tries own their nodes). */
void
sb_segmap_free(sb_segmap *m)
{
    size_t i, cap = m->slots ? m->mask + 1 : 0;
    for (i = 0; i < cap; i++)
        if (m->slots[i].val != NULL)
            PyMem_RawFree(m->slots[i].key);
    PyMem_RawFree(m->slots);
    m->slots = NULL;
    m->mask = 0;
    m->count = 0;
}
