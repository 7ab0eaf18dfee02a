/*
 * siovd.model.accel._fastpath: the executor's common descriptors in C.
 *
 * The pure-Python executor (ops.py) is the reference model; this core runs the subset it can
 * run bit-identically and hands everything else back. It executes NOOP, MEMMOVE (not the
 * descending overlap case), MEMFILL, COMPARE, COMPVAL and CRCGEN of at most 1 MiB (one
 * executor slice: no budget boundary inside an operation), alone or as the entries of a
 * BATCH, against a PageCache: a copy of IOTLB entries for one PASID-table tag that Python
 * fills from the IOTLB (siovd.model.iommu.native) and drops whenever the IOTLB or the
 * physical memory could have changed under it.
 *
 * A descriptor runs here only if every address it touches hits the cache with the access it
 * needs and it completes with SUCCESS (or SUCCESS_PRED with a completion record): then its
 * effects are exactly those of the Python path, and the number of IOTLB lookups it made (one
 * per IOTLB page a range crosses, as translate._paging counts them) is returned for Python
 * to add to the IOTLB's hit counter. Anything else (a miss, a validation error, a fault, a
 * non-success status that would raise a software error) stops before any side effect and
 * returns "need" (a miss: Python may fill the cache and call again) or "fallback" (Python
 * runs that descriptor).
 *
 * Invariants for running with the GIL released (the data work does):
 * - the host addresses in a PageCache stay mapped for the call: Python stamps a cache with
 *   the memory's generation (bumped when a region leaves the physical space) and never
 *   passes a stale cache; a region's mapping is closed only after it has left the space, so
 *   a cache checked at the call's start stays valid to its end as long as no region is
 *   removed during the call (the model's callers remove regions only on the thread that
 *   also makes these calls, or hold the model's lock around both);
 * - a PageCache is used by one call at a time: a call marks it busy; add() and clear() on a
 *   busy cache raise, and a call on a busy cache falls back;
 * - the descriptor list of a batch is a bytes object the call holds a reference to.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SLICE (1u << 20)
#define MAX_RUNS 300

/* linux/idxd.h op flags */
#define F_FENCE 0x0001u
#define F_CRAV 0x0004u
#define F_RCR 0x0008u
#define F_RCI 0x0010u
#define F_CR 0x0080u
#define F_COMMON_MASK 0xFFBFu
#define F_FILL_16B 0x010000u
#define F_READ_CRC_SEED 0x010000u
#define F_BYPASS_CRC_INV_REF 0x020000u
#define F_BYPASS_DATA_REF 0x040000u

enum { OP_NOOP = 0, OP_BATCH = 1, OP_MEMMOVE = 3, OP_MEMFILL = 4, OP_COMPARE = 5,
       OP_COMPVAL = 6, OP_CRCGEN = 0x10 };
enum { ST_SUCCESS = 1, ST_SUCCESS_PRED = 2 };
enum { R_DONE = 0, R_NEED = 1, R_FALLBACK = 2, R_BUDGET = 3 };

#define ALL UINT64_MAX
#define U32_ALL 0xFFFFFFFFull
#define HI32 (ALL ^ U32_ALL)

/* checks.SPECS for the opcodes run here (a unit test compares them with spec()). */
typedef struct {
    int known;
    uint32_t opspec;
    int takes_cr;
    uint64_t reserved[6];
    uint32_t unreserve_flag; /* 0: none */
    int unreserve_index;
} spec_t;

static const spec_t SPECS[0x11] = {
    [OP_NOOP] = {1, 0, 0, {ALL, ALL, U32_ALL, ALL, ALL, ALL}, 0, 0},
    [OP_MEMMOVE] = {1, 0, 0, {0, 0, 0, ALL, ALL, ALL}, 0, 0},
    [OP_MEMFILL] = {1, F_FILL_16B, 0, {0, 0, 0, ALL, ALL, ALL}, F_FILL_16B, 3},
    [OP_COMPARE] = {1, 0, 1, {0, 0, 0, ALL ^ 0xFF, ALL, ALL}, 0, 0},
    [OP_COMPVAL] = {1, 0, 1, {0, 0, 0, ALL ^ 0xFF, ALL, ALL}, 0, 0},
    [OP_CRCGEN] = {1, F_READ_CRC_SEED | F_BYPASS_CRC_INV_REF | F_BYPASS_DATA_REF, 0,
                   {0, ALL, 0, HI32, ALL, ALL}, F_READ_CRC_SEED, 4},
};

/* ---- the page cache ------------------------------------------------------------------- */

typedef struct {
    uint64_t key; /* page number at its level << 2 | level; 0: empty */
    uint64_t iova; /* first address of the IOTLB page */
    uint64_t end; /* one past its last */
    uint64_t phys;
    uint8_t *host; /* host address of phys */
    uint64_t region;
    int rw; /* the run's protection is read-write (translate._paging's prot) */
    int write_ok; /* a write may use the entry without a walk */
} slot_t;

typedef struct PageCacheS {
    PyObject_HEAD
    slot_t *slots;
    size_t cap; /* power of two */
    size_t count;
    int busy;
    int devtlb; /* entries copy a device TLB's (DevTlbDmaSpace), not the IOTLB's */
    /* device TLB only: the IOTLB copy a miss goes to, set while the device TLB is full (a
     * miss then fills nothing: it is an IOMMU translation and nothing else) */
    struct PageCacheS *backing;
} PageCache;

static inline size_t hash_key(uint64_t key, size_t cap) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

static const slot_t *probe(const PageCache *c, uint64_t key) {
    size_t i = hash_key(key, c->cap);
    for (;;) {
        const slot_t *s = &c->slots[i];
        if (s->key == key)
            return s;
        if (s->key == 0)
            return NULL;
        i = (i + 1) & (c->cap - 1);
    }
}

/* The IOTLB's lookup order: 4 KiB, then 2 MiB, then 1 GiB. */
static inline const slot_t *lookup(const PageCache *c, uint64_t iova) {
    const slot_t *s = probe(c, ((iova >> 12) << 2) | 1);
    if (s == NULL) {
        s = probe(c, ((iova >> 21) << 2) | 2);
        if (s == NULL)
            s = probe(c, ((iova >> 30) << 2) | 3);
    }
    return s;
}

static int grow(PageCache *c) {
    size_t cap = c->cap ? c->cap * 2 : 64;
    slot_t *slots = PyMem_Calloc(cap, sizeof(slot_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < c->cap; i++) {
        slot_t *s = &c->slots[i];
        if (s->key == 0)
            continue;
        size_t j = hash_key(s->key, cap);
        while (slots[j].key != 0)
            j = (j + 1) & (cap - 1);
        slots[j] = *s;
    }
    PyMem_Free(c->slots);
    c->slots = slots;
    c->cap = cap;
    return 0;
}

static PyObject *cache_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"devtlb", NULL};
    int devtlb = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", names, &devtlb))
        return NULL;
    PageCache *c = (PageCache *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->devtlb = devtlb;
    if (grow(c) < 0) {
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static void cache_dealloc(PageCache *c) {
    Py_XDECREF((PyObject *)c->backing);
    PyMem_Free(c->slots);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static int refuse_busy(PageCache *c) {
    if (c->busy) {
        PyErr_SetString(PyExc_RuntimeError, "page cache in use by a native call");
        return -1;
    }
    return 0;
}

static int put(PageCache *c, uint64_t key, uint64_t lo, uint64_t hi, uint64_t phys,
               unsigned long long host, uint64_t region, int rw, int write_ok) {
    if ((c->count + 1) * 2 > c->cap && grow(c) < 0)
        return -1;
    size_t i = hash_key(key, c->cap);
    while (c->slots[i].key != 0 && c->slots[i].key != key)
        i = (i + 1) & (c->cap - 1);
    if (c->slots[i].key == 0)
        c->count++;
    slot_t *s = &c->slots[i];
    s->key = key;
    s->iova = lo;
    s->end = hi;
    s->phys = phys;
    s->host = (uint8_t *)(uintptr_t)host;
    s->region = region;
    s->rw = rw;
    s->write_ok = write_ok;
    return 0;
}

static PyObject *cache_add(PageCache *c, PyObject *args) {
    unsigned long long iova, size, phys, host, region;
    int rw, write_ok;
    if (!PyArg_ParseTuple(args, "KKKKKpp", &iova, &size, &phys, &host, &region, &rw, &write_ok))
        return NULL;
    if (refuse_busy(c) < 0)
        return NULL;
    if (c->devtlb) {
        PyErr_SetString(PyExc_ValueError, "a device-TLB cache takes add_devtlb()");
        return NULL;
    }
    int level;
    if (size == 4096)
        level = 1;
    else if (size == (2ull << 20))
        level = 2;
    else if (size == (1ull << 30))
        level = 3;
    else {
        PyErr_SetString(PyExc_ValueError, "page size must be 4 KiB, 2 MiB or 1 GiB");
        return NULL;
    }
    if ((iova & (size - 1)) || (phys & (size - 1))) {
        PyErr_SetString(PyExc_ValueError, "page not aligned to its size");
        return NULL;
    }
    uint64_t key = ((iova >> (12 + 9 * (level - 1))) << 2) | (uint64_t)level;
    if (put(c, key, iova, iova + size, phys, host, region, rw, write_ok) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* add_devtlb(key, lo, hi, host, write_ok): a device-TLB entry, with its DevTlbDmaSpace key
 * (iova >> 12 for a 4 KiB page, ~(iova >> 21) for a 2 MiB frame); host is lo's address. */
static PyObject *cache_add_devtlb(PageCache *c, PyObject *args) {
    long long pykey;
    unsigned long long lo, hi, host;
    int write_ok;
    if (!PyArg_ParseTuple(args, "LKKKp", &pykey, &lo, &hi, &host, &write_ok))
        return NULL;
    if (refuse_busy(c) < 0)
        return NULL;
    if (!c->devtlb || hi <= lo) {
        PyErr_SetString(PyExc_ValueError, "not a device-TLB cache, or an empty entry");
        return NULL;
    }
    uint64_t key = pykey >= 0 ? ((uint64_t)pykey << 2) | 1 : ((uint64_t)~pykey << 2) | 2;
    if (put(c, key, lo, hi, 0, host, 0, 1, write_ok) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *cache_clear(PageCache *c, PyObject *unused) {
    (void)unused;
    if (refuse_busy(c) < 0)
        return NULL;
    memset(c->slots, 0, c->cap * sizeof(slot_t));
    c->count = 0;
    Py_RETURN_NONE;
}

static Py_ssize_t cache_len(PageCache *c) { return (Py_ssize_t)c->count; }

static PyTypeObject PageCacheType;

static PyObject *cache_set_backing(PageCache *c, PyObject *other) {
    if (refuse_busy(c) < 0)
        return NULL;
    if (other != Py_None) {
        if (!PyObject_TypeCheck(other, &PageCacheType) || ((PageCache *)other)->devtlb ||
            !c->devtlb) {
            PyErr_SetString(PyExc_ValueError, "a device-TLB cache backs onto an IOTLB cache");
            return NULL;
        }
        Py_INCREF(other);
    }
    Py_XDECREF((PyObject *)c->backing);
    c->backing = other == Py_None ? NULL : (PageCache *)other;
    Py_RETURN_NONE;
}

static PyMethodDef cache_methods[] = {
    {"set_backing", (PyCFunction)cache_set_backing, METH_O,
     "set_backing(cache or None): where device-TLB misses translate (a full device TLB)"},
    {"add", (PyCFunction)cache_add, METH_VARARGS,
     "add(iova, size, phys, host, region, rw, write_ok): cache one IOTLB entry"},
    {"add_devtlb", (PyCFunction)cache_add_devtlb, METH_VARARGS,
     "add_devtlb(key, lo, hi, host, write_ok): cache one device-TLB entry"},
    {"clear", (PyCFunction)cache_clear, METH_NOARGS, "drop every entry"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods cache_as_sequence = {.sq_length = (lenfunc)cache_len};

static PyTypeObject PageCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "siovd.model.accel._fastpath.PageCache",
    .tp_basicsize = sizeof(PageCache),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "IOTLB entries of one PASID-table tag, resolved to host addresses",
    .tp_new = cache_new,
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_methods = cache_methods,
    .tp_as_sequence = &cache_as_sequence,
};

/* ---- translation ------------------------------------------------------------------------ */

typedef struct {
    uint8_t *host;
    uint64_t len;
    uint64_t phys;
    uint64_t region;
    int rw;
} run_t;

typedef struct {
    run_t r[MAX_RUNS];
    int n;
} runs_t;

typedef struct {
    const PageCache *cache;
    uint64_t hits; /* lookups of the descriptor in progress */
    uint64_t backing_hits; /* IOTLB lookups behind a full device TLB */
    int need_backing; /* the miss was in the backing IOTLB copy */
    uint64_t need; /* the address that missed */
    uint64_t need_len; /* the length of the range it starts (device TLB: one entry or none) */
    int need_write;
} xlat_t;

/* translate._paging over an IOTLB copy: 0, or R_NEED (a miss) / R_FALLBACK (too many runs). */
static int translate_pages(xlat_t *x, const PageCache *cache, uint64_t *hits, uint64_t iova,
                           uint64_t len, int write, runs_t *out) {
    out->n = 0;
    uint64_t pos = iova, end = iova + len;
    while (pos < end) {
        const slot_t *s = lookup(cache, pos);
        if (s == NULL || (write && !s->write_ok)) {
            x->need = pos;
            x->need_len = end - pos;
            x->need_write = write;
            return R_NEED;
        }
        (*hits)++;
        uint64_t off = pos - s->iova;
        uint64_t phys = s->phys + off;
        uint64_t n = s->end - pos;
        if (n > end - pos)
            n = end - pos;
        run_t *last = out->n ? &out->r[out->n - 1] : NULL;
        if (last && last->region == s->region && last->phys + last->len == phys &&
            last->rw == s->rw) {
            last->len += n;
        } else {
            if (out->n == MAX_RUNS)
                return R_FALLBACK;
            run_t *r = &out->r[out->n++];
            r->host = s->host + off;
            r->len = n;
            r->phys = phys;
            r->region = s->region;
            r->rw = s->rw;
        }
        pos += n;
    }
    return 0;
}

static int translate(xlat_t *x, uint64_t iova, uint64_t len, int write, runs_t *out) {
    out->n = 0;
    uint64_t end = iova + len;
    if (end < iova)
        return R_FALLBACK;
    x->need_backing = 0;
    if (!x->cache->devtlb)
        return translate_pages(x, x->cache, &x->hits, iova, len, write, out);
    if (len) {
        /* devtlb.DevTlbDmaSpace.runs: the 2 MiB frame's entry if it holds the range, else
         * the 4 KiB page's; a hit is one range inside one entry, else the IOMMU's path */
        const slot_t *s = probe(x->cache, ((iova >> 21) << 2) | 2);
        if (s == NULL || !(s->iova <= iova && end <= s->end))
            s = probe(x->cache, ((iova >> 12) << 2) | 1);
        if (s == NULL || !(s->iova <= iova && end <= s->end) || (write && !s->write_ok)) {
            if (x->cache->backing) {
                int rc = translate_pages(x, x->cache->backing, &x->backing_hits, iova, len,
                                         write, out);
                x->need_backing = rc == R_NEED;
                return rc;
            }
            x->need = iova;
            x->need_len = len;
            x->need_write = write;
            return R_NEED;
        }
        x->hits++;
        run_t *r = &out->r[out->n++];
        r->host = s->host + (iova - s->iova);
        r->len = len;
        r->phys = iova; /* one run: never merged */
        r->region = 0;
        r->rw = 1;
        return 0;
    }
    return 0;
}

/* ---- operations over runs (ranges.py) ---------------------------------------------------- */

/* copy_views: cut both lists at each other's boundaries, memmove each pair in order. */
static void copy_runs(const runs_t *dst, const runs_t *src, uint64_t length) {
    int i = 0, j = 0;
    uint64_t oi = 0, oj = 0;
    while (length > 0) {
        const run_t *a = &dst->r[i], *b = &src->r[j];
        uint64_t step = a->len - oi;
        if (b->len - oj < step)
            step = b->len - oj;
        if (length < step)
            step = length;
        memmove(a->host + oi, b->host + oj, step);
        oi += step;
        oj += step;
        length -= step;
        if (oi == a->len) {
            i++;
            oi = 0;
        }
        if (oj == b->len) {
            j++;
            oj = 0;
        }
    }
}

static void fill_runs(const runs_t *dst, const uint8_t *pattern, unsigned size) {
    uint64_t offset = 0;
    for (int i = 0; i < dst->n; i++) {
        uint8_t *p = dst->r[i].host;
        uint64_t len = dst->r[i].len;
        uint64_t k = 0;
        unsigned phase = (unsigned)(offset % size);
        /* byte t of the transfer is pattern[t mod size] */
        while (k < len && phase != 0) {
            p[k++] = pattern[phase];
            phase = (phase + 1) % size;
        }
        for (; k + size <= len; k += size)
            memcpy(p + k, pattern, size);
        for (unsigned q = 0; k < len; q++)
            p[k++] = pattern[q];
        offset += len;
    }
}

static int64_t first_diff_runs(const runs_t *a, const runs_t *b, uint64_t length) {
    int i = 0, j = 0;
    uint64_t oi = 0, oj = 0, done = 0;
    while (length > 0) {
        const run_t *x = &a->r[i], *y = &b->r[j];
        uint64_t step = x->len - oi;
        if (y->len - oj < step)
            step = y->len - oj;
        if (length < step)
            step = length;
        const uint8_t *p = x->host + oi, *q = y->host + oj;
        if (memcmp(p, q, step) != 0) {
            for (uint64_t k = 0; k < step; k++)
                if (p[k] != q[k])
                    return (int64_t)(done + k);
        }
        done += step;
        oi += step;
        oj += step;
        length -= step;
        if (oi == x->len) {
            i++;
            oi = 0;
        }
        if (oj == y->len) {
            j++;
            oj = 0;
        }
    }
    return -1;
}

static int64_t pattern_diff_runs(const runs_t *src, const uint8_t pattern[8]) {
    uint64_t offset = 0;
    uint64_t word;
    memcpy(&word, pattern, 8);
    for (int i = 0; i < src->n; i++) {
        const uint8_t *p = src->r[i].host;
        uint64_t len = src->r[i].len, k = 0;
        while (k < len && ((offset + k) & 7)) {
            if (p[k] != pattern[(offset + k) & 7])
                return (int64_t)(offset + k);
            k++;
        }
        for (; k + 8 <= len; k += 8) {
            uint64_t v;
            memcpy(&v, p + k, 8);
            if (v != word)
                break;
        }
        for (; k < len; k++)
            if (p[k] != pattern[(offset + k) & 7])
                return (int64_t)(offset + k);
        offset += len;
    }
    return -1;
}

/* ---- CRC-32C (crc.py) --------------------------------------------------------------------- */

static uint32_t crc_table[8][256];
static uint8_t bitrev8[256];

static void crc_init(void) {
    for (unsigned n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][n] = c;
        unsigned r = 0;
        for (int k = 0; k < 8; k++)
            if (n & (1u << k))
                r |= 0x80u >> k;
        bitrev8[n] = (uint8_t)r;
    }
    for (unsigned n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++)
            crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xFF];
}

static uint32_t bitrev32(uint32_t v) {
    return ((uint32_t)bitrev8[v & 0xFF] << 24) | ((uint32_t)bitrev8[(v >> 8) & 0xFF] << 16) |
           ((uint32_t)bitrev8[(v >> 16) & 0xFF] << 8) | (uint32_t)bitrev8[v >> 24];
}

/* crc32c(data, value) of the crc32c package: value is a finalised CRC. */
static uint32_t crc_update(uint32_t value, const uint8_t *p, uint64_t len, int reflect_data) {
    uint32_t c = ~value;
    if (!reflect_data) {
        while (len >= 8) {
            uint32_t lo, hi;
            memcpy(&lo, p, 4);
            memcpy(&hi, p + 4, 4);
            lo ^= c;
            c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
                crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
                crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
                crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
            p += 8;
            len -= 8;
        }
        while (len--)
            c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
    } else {
        while (len--)
            c = (c >> 8) ^ crc_table[0][(c ^ bitrev8[*p++]) & 0xFF];
    }
    return ~c;
}

/* ---- one descriptor --------------------------------------------------------------------- */

typedef struct {
    uint32_t w0, flags; /* flags: bits 31:24 opcode */
    uint64_t comp, f16, f24;
    uint32_t size;
    uint16_t handle, rsvd;
    uint64_t f40, f48, f56;
} desc_t;

static void decode(const uint8_t *raw, desc_t *d) {
    memcpy(&d->w0, raw, 4);
    memcpy(&d->flags, raw + 4, 4);
    memcpy(&d->comp, raw + 8, 8);
    memcpy(&d->f16, raw + 16, 8);
    memcpy(&d->f24, raw + 24, 8);
    memcpy(&d->size, raw + 32, 4);
    memcpy(&d->handle, raw + 36, 2);
    memcpy(&d->rsvd, raw + 38, 2);
    memcpy(&d->f40, raw + 40, 8);
    memcpy(&d->f48, raw + 48, 8);
    memcpy(&d->f56, raw + 56, 8);
}

typedef struct {
    uint64_t op_config;
    uint64_t max_transfer;
    int64_t irq_count; /* -1: unchecked */
} wq_t;

/* checks.validate: 0 if the descriptor passes and runs here, else R_FALLBACK. */
static int validate(const desc_t *d, const wq_t *wq, int in_batch) {
    uint32_t flags = d->flags & 0xFFFFFF;
    unsigned opcode = d->flags >> 24;
    if ((flags & F_CRAV) && (d->comp & 31))
        return R_FALLBACK;
    if (opcode >= 0x11 || !SPECS[opcode].known || opcode >= 64 || !((wq->op_config >> opcode) & 1))
        return R_FALLBACK;
    (void)in_batch; /* BATCH is never in SPECS here */
    const spec_t *s = &SPECS[opcode];
    uint32_t invalid = flags & ~(F_COMMON_MASK | s->opspec);
    if ((flags & F_CR) && !s->takes_cr)
        invalid |= F_CR;
    if ((flags & F_RCR) && !(flags & F_CRAV))
        invalid |= F_RCR;
    if (invalid || d->rsvd)
        return R_FALLBACK;
    uint64_t r[6];
    memcpy(r, s->reserved, sizeof r);
    if (s->unreserve_flag && (flags & s->unreserve_flag))
        r[s->unreserve_index] = 0;
    if ((d->f16 & r[0]) || (d->f24 & r[1]) || (d->size & r[2]) || (d->f40 & r[3]) ||
        (d->f48 & r[4]) || (d->f56 & r[5]))
        return R_FALLBACK;
    if ((flags & F_RCI) && wq->irq_count >= 0 && d->handle >= wq->irq_count)
        return R_FALLBACK;
    if (opcode != OP_NOOP && d->size > wq->max_transfer)
        return R_FALLBACK;
    if (d->size > SLICE)
        return R_FALLBACK; /* more than one slice: budget boundaries inside the op */
    return 0;
}

typedef struct {
    uint8_t record[32];
    int status;
    int written;
} result_t;

typedef struct {
    runs_t a, b, c;
} scratch_t;

/* Run one descriptor: 0 (done, effects made), R_NEED or R_FALLBACK (no effect). */
static int run_desc(const uint8_t *raw, const wq_t *wq, int in_batch, xlat_t *x, scratch_t *sc,
                    result_t *out) {
    desc_t d;
    decode(raw, &d);
    int rc = validate(&d, wq, in_batch);
    if (rc)
        return rc;
    unsigned opcode = d.flags >> 24;
    uint32_t flags = d.flags;
    uint64_t size = d.size;
    int status = ST_SUCCESS;
    unsigned result = 0;
    uint64_t completed = 0, word = 0;
    int64_t diff = -1;
    uint8_t pattern[16];
    unsigned plen = 8;
    int need_record = (flags & F_CRAV) != 0;

    /* translate everything the Python op translates, in its order */
    switch (opcode) {
    case OP_NOOP:
        break;
    case OP_MEMMOVE:
        if (d.f16 < d.f24 && d.f24 - d.f16 < size)
            return R_FALLBACK; /* descending copy */
        if (size && ((rc = translate(x, d.f16, size, 0, &sc->a)) ||
                     (rc = translate(x, d.f24, size, 1, &sc->b))))
            return rc;
        break;
    case OP_MEMFILL:
        if (size && (rc = translate(x, d.f24, size, 1, &sc->b)))
            return rc;
        break;
    case OP_COMPARE:
        if (size && ((rc = translate(x, d.f16, size, 0, &sc->a)) ||
                     (rc = translate(x, d.f24, size, 0, &sc->b))))
            return rc;
        break;
    case OP_COMPVAL:
    case OP_CRCGEN:
        if (opcode == OP_CRCGEN && (flags & F_READ_CRC_SEED) &&
            (rc = translate(x, d.f48, 4, 0, &sc->c)))
            return rc;
        if (size && (rc = translate(x, d.f16, size, 0, &sc->a)))
            return rc;
        break;
    default:
        return R_FALLBACK;
    }
    /* read-only operations first: their status decides whether we may go on */
    if (opcode == OP_COMPARE || opcode == OP_COMPVAL) {
        if (size) {
            if (opcode == OP_COMPARE) {
                diff = first_diff_runs(&sc->a, &sc->b, size);
            } else {
                memcpy(pattern, &d.f24, 8);
                diff = pattern_diff_runs(&sc->a, pattern);
            }
        }
        result = diff >= 0;
        if (diff >= 0)
            completed = opcode == OP_COMPVAL ? ((uint64_t)diff & ~7ull) : (uint64_t)diff;
        if ((flags & F_CR) && result != (d.f40 & 0xFF))
            status = ST_SUCCESS_PRED;
    } else if (opcode == OP_CRCGEN) {
        uint32_t seed;
        if (flags & F_READ_CRC_SEED) {
            uint8_t b[4];
            uint64_t got = 0;
            for (int i = 0; i < sc->c.n && got < 4; i++) {
                uint64_t n = sc->c.r[i].len;
                if (n > 4 - got)
                    n = 4 - got;
                memcpy(b + got, sc->c.r[i].host, n);
                got += n;
            }
            memcpy(&seed, b, 4);
        } else {
            seed = (uint32_t)(d.f40 & U32_ALL);
        }
        uint32_t value = (flags & F_BYPASS_CRC_INV_REF) ? ~bitrev32(seed) : seed;
        if (size)
            for (int i = 0; i < sc->a.n; i++)
                value = crc_update(value, sc->a.r[i].host, sc->a.r[i].len,
                                   (flags & F_BYPASS_DATA_REF) != 0);
        word = (flags & F_BYPASS_CRC_INV_REF) ? bitrev32(~value) : value;
    }
    /* a non-success status without a record raises a software error: Python's */
    if (status != ST_SUCCESS && !need_record)
        return R_FALLBACK;
    need_record = need_record && (status != ST_SUCCESS || (flags & F_RCR));
    if (need_record && (rc = translate(x, d.comp, 32, 1, &sc->c)))
        return rc;
    /* from here on: effects */
    if (opcode == OP_MEMMOVE && size) {
        copy_runs(&sc->b, &sc->a, size);
    } else if (opcode == OP_MEMFILL && size) {
        memcpy(pattern, &d.f16, 8);
        if (flags & F_FILL_16B) {
            memcpy(pattern + 8, &d.f40, 8);
            plen = 16;
        }
        fill_runs(&sc->b, pattern, plen);
    }
    uint8_t *rec = out->record;
    memset(rec, 0, 32);
    rec[0] = (uint8_t)status;
    rec[1] = (uint8_t)result;
    uint32_t c32 = (uint32_t)completed;
    memcpy(rec + 4, &c32, 4);
    memcpy(rec + 16, &word, 8);
    out->status = status;
    out->written = 0;
    if (need_record) {
        /* bytes 1..31 first, the status byte last (software polls it) */
        runs_t *v = &sc->c;
        uint64_t pos = v->r[0].len;
        for (int i = 1; i < v->n; i++) {
            memcpy(v->r[i].host, rec + pos, v->r[i].len);
            pos += v->r[i].len;
        }
        memcpy(v->r[0].host + 1, rec + 1, v->r[0].len - 1);
        __atomic_store_n(v->r[0].host, rec[0], __ATOMIC_RELEASE);
        out->written = 1;
    }
    return 0;
}

static int parse_wq(PyObject *args_tuple, wq_t *wq, unsigned long long oc,
                    unsigned long long mt, long long irq) {
    (void)args_tuple;
    wq->op_config = oc;
    wq->max_transfer = mt;
    wq->irq_count = irq;
    return 0;
}

static int begin(PageCache *c) {
    if (c->busy || (c->backing && c->backing->busy))
        return -1;
    c->busy = 1;
    if (c->backing)
        c->backing->busy = 1;
    return 0;
}

static void end(PageCache *c) {
    c->busy = 0;
    if (c->backing)
        c->backing->busy = 0;
}

/* run_one(cache, desc, op_config, max_transfer, irq_count)
 *   -> (0, status, record, written, hits, backing_hits)
 *    | (1, iova, write, length, in_backing) | (2,) */
static PyObject *run_one(PyObject *self, PyObject *args) {
    (void)self;
    PageCache *cache;
    Py_buffer desc;
    unsigned long long oc, mt;
    long long irq;
    if (!PyArg_ParseTuple(args, "O!y*KKL", &PageCacheType, &cache, &desc, &oc, &mt, &irq))
        return NULL;
    if (desc.len != 64) {
        PyBuffer_Release(&desc);
        PyErr_SetString(PyExc_ValueError, "a descriptor is 64 bytes");
        return NULL;
    }
    if (begin(cache) < 0) {
        PyBuffer_Release(&desc);
        return Py_BuildValue("(i)", R_FALLBACK);
    }
    wq_t wq;
    parse_wq(args, &wq, oc, mt, irq);
    xlat_t x = {cache, 0, 0, 0, 0, 0, 0};
    result_t res;
    scratch_t *sc = PyMem_RawMalloc(sizeof(scratch_t));
    if (sc == NULL) {
        end(cache);
        PyBuffer_Release(&desc);
        return PyErr_NoMemory();
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_desc(desc.buf, &wq, 0, &x, sc, &res);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(sc);
    end(cache);
    PyBuffer_Release(&desc);
    if (rc == R_NEED)
        return Py_BuildValue("(iKiKi)", R_NEED, (unsigned long long)x.need, x.need_write,
                             (unsigned long long)x.need_len, x.need_backing);
    if (rc)
        return Py_BuildValue("(i)", rc);
    return Py_BuildValue("(iiy#iKK)", R_DONE, res.status, (const char *)res.record,
                         (Py_ssize_t)32, res.written, (unsigned long long)x.hits,
                         (unsigned long long)x.backing_hits);
}

/* run_batch(cache, list, index, count, failed, op_config, max_transfer, irq_count,
 *           budget_left, max_entries)
 *   -> (code, index, completed_here, failed, charged, hits, interrupts, need_iova, need_write,
 *       need_len, need_backing, backing_hits)
 * Runs batch entries from ``index`` as ops._op_batch does, until the batch ends (R_DONE),
 * an entry misses (R_NEED) or is not ours (R_FALLBACK, also a fence after a failure), or
 * the byte budget runs out after an entry (R_BUDGET, as Budget.charge(DESC_COST) says), or
 * max_entries entries ran (R_BUDGET too: the caller checks its clock). */
static PyObject *run_batch(PyObject *self, PyObject *args) {
    (void)self;
    PageCache *cache;
    Py_buffer list;
    Py_ssize_t index, count, max_entries;
    int failed;
    unsigned long long oc, mt;
    long long irq, left;
    if (!PyArg_ParseTuple(args, "O!y*nnpKKLLn", &PageCacheType, &cache, &list, &index, &count,
                          &failed, &oc, &mt, &irq, &left, &max_entries))
        return NULL;
    if (count < 0 || index < 0 || index > count || list.len < count * 64) {
        PyBuffer_Release(&list);
        PyErr_SetString(PyExc_ValueError, "batch list shorter than its count");
        return NULL;
    }
    if (begin(cache) < 0) {
        PyBuffer_Release(&list);
        return Py_BuildValue("(inniLKOKiKiK)", R_FALLBACK, index, (Py_ssize_t)0, failed, 0LL,
                             0ULL, Py_None, 0ULL, 0, 0ULL, 0, 0ULL);
    }
    wq_t wq;
    parse_wq(args, &wq, oc, mt, irq);
    xlat_t x = {cache, 0, 0, 0, 0, 0, 0};
    scratch_t *sc = PyMem_RawMalloc(sizeof(scratch_t));
    /* interrupt handles of entries that asked for one, with their index */
    Py_ssize_t *irqs = PyMem_RawMalloc(sizeof(Py_ssize_t) * 2 * (size_t)(count - index + 1));
    if (sc == NULL || irqs == NULL) {
        PyMem_RawFree(sc);
        PyMem_RawFree(irqs);
        end(cache);
        PyBuffer_Release(&list);
        return PyErr_NoMemory();
    }
    Py_ssize_t nirq = 0, done = 0;
    long long charged = 0;
    uint64_t hits = 0, backing_hits = 0;
    int code = R_DONE;
    const uint8_t *base = list.buf;
    Py_BEGIN_ALLOW_THREADS
    while (index < count) {
        const uint8_t *raw = base + index * 64;
        uint32_t flags;
        memcpy(&flags, raw + 4, 4);
        if ((flags & F_FENCE) && failed) {
            code = R_FALLBACK;
            break;
        }
        result_t res;
        x.hits = 0;
        x.backing_hits = 0;
        int rc = run_desc(raw, &wq, 1, &x, sc, &res);
        if (rc) {
            code = rc;
            break;
        }
        hits += x.hits;
        backing_hits += x.backing_hits;
        if (flags & F_RCI) {
            uint16_t handle;
            memcpy(&handle, raw + 36, 2);
            irqs[2 * nirq] = handle;
            irqs[2 * nirq + 1] = index;
            nirq++;
        }
        done++;
        if (res.status != ST_SUCCESS)
            failed = 1;
        index++;
        if (index < count) {
            charged += 4096;
            if (left - charged <= 0 || done >= max_entries) {
                code = R_BUDGET;
                break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(sc);
    end(cache);
    PyBuffer_Release(&list);
    PyObject *interrupts = PyList_New(nirq);
    if (interrupts == NULL) {
        PyMem_RawFree(irqs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nirq; i++) {
        PyObject *pair = Py_BuildValue("(nn)", irqs[2 * i], irqs[2 * i + 1]);
        if (pair == NULL) {
            Py_DECREF(interrupts);
            PyMem_RawFree(irqs);
            return NULL;
        }
        PyList_SET_ITEM(interrupts, i, pair);
    }
    PyMem_RawFree(irqs);
    return Py_BuildValue("(inniLKNKiKiK)", code, index, done, failed, charged,
                         (unsigned long long)hits, interrupts, (unsigned long long)x.need,
                         x.need_write, (unsigned long long)x.need_len, x.need_backing,
                         (unsigned long long)backing_hits);
}

/* run_many(cache, descs, op_config, max_transfer, irq_count, budget_left, max_count)
 *   -> (code, done, charged, hits, backing_hits, last_record, last_written, need_iova,
 *       need_write, need_len, need_backing)
 * Runs consecutive queued descriptors (64 bytes each, one WQ, one requester: one page cache)
 * in order, as the scheduler's loop runs them one by one: each that runs here charges
 * DESC_COST (4096) after it; the run stops after the descriptor that spends ``budget_left``
 * (R_BUDGET), after ``max_count`` (R_BUDGET: the caller checks its clock), after one that
 * asks for an interrupt (R_DONE: the caller signals it, with ``last_record``), at the end of
 * ``descs`` (R_DONE), or before one that misses (R_NEED) or is not ours (R_FALLBACK): those
 * had no effect. ``charged`` counts every descriptor that ran, the last one included. */
static PyObject *run_many(PyObject *self, PyObject *args) {
    (void)self;
    PageCache *cache;
    Py_buffer descs;
    unsigned long long oc, mt;
    long long irq, left;
    Py_ssize_t max_count;
    if (!PyArg_ParseTuple(args, "O!y*KKLLn", &PageCacheType, &cache, &descs, &oc, &mt, &irq,
                          &left, &max_count))
        return NULL;
    if (descs.len % 64) {
        PyBuffer_Release(&descs);
        PyErr_SetString(PyExc_ValueError, "descriptors are 64 bytes each");
        return NULL;
    }
    Py_ssize_t count = descs.len / 64;
    if (count > max_count)
        count = max_count;
    if (begin(cache) < 0) {
        PyBuffer_Release(&descs);
        return Py_BuildValue("(innKKOiKiKi)", R_FALLBACK, (Py_ssize_t)0, (Py_ssize_t)0, 0ULL,
                             0ULL, Py_None, 0, 0ULL, 0, 0ULL, 0);
    }
    wq_t wq;
    parse_wq(args, &wq, oc, mt, irq);
    xlat_t x = {cache, 0, 0, 0, 0, 0, 0};
    scratch_t *sc = PyMem_RawMalloc(sizeof(scratch_t));
    if (sc == NULL) {
        end(cache);
        PyBuffer_Release(&descs);
        return PyErr_NoMemory();
    }
    Py_ssize_t done = 0;
    long long charged = 0;
    uint64_t hits = 0, backing_hits = 0;
    int code = R_DONE, last_written = 0, have_last = 0;
    result_t res;
    const uint8_t *base = descs.buf;
    Py_BEGIN_ALLOW_THREADS
    while (done < count) {
        const uint8_t *raw = base + done * 64;
        x.hits = 0;
        x.backing_hits = 0;
        int rc = run_desc(raw, &wq, 0, &x, sc, &res);
        if (rc) {
            code = rc;
            break;
        }
        hits += x.hits;
        backing_hits += x.backing_hits;
        have_last = 1;
        last_written = res.written;
        done++;
        charged += 4096;
        uint32_t flags;
        memcpy(&flags, raw + 4, 4);
        if (flags & F_RCI)
            break;
        if (left - charged <= 0) {
            code = R_BUDGET;
            break;
        }
    }
    if (code == R_DONE && done == max_count && done < descs.len / 64)
        code = R_BUDGET;
    Py_END_ALLOW_THREADS
    PyMem_RawFree(sc);
    end(cache);
    PyBuffer_Release(&descs);
    PyObject *record = have_last ? PyBytes_FromStringAndSize((const char *)res.record, 32)
                                 : (Py_INCREF(Py_None), Py_None);
    if (record == NULL)
        return NULL;
    return Py_BuildValue("(innKKNiKiKi)", code, done, (Py_ssize_t)charged,
                         (unsigned long long)hits, (unsigned long long)backing_hits, record,
                         last_written, (unsigned long long)x.need, x.need_write,
                         (unsigned long long)x.need_len, x.need_backing);
}

/* address(buffer) -> the address of a writable or read-only buffer's first byte. */
static PyObject *address(PyObject *self, PyObject *obj) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned long long addr = (unsigned long long)(uintptr_t)view.buf;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(addr);
}

/* spec(opcode) -> None or (opspec, takes_cr, reserved, unreserve) as in checks.SPECS. */
static PyObject *spec(PyObject *self, PyObject *arg) {
    (void)self;
    long opcode = PyLong_AsLong(arg);
    if (opcode == -1 && PyErr_Occurred())
        return NULL;
    if (opcode < 0 || opcode >= 0x11 || !SPECS[opcode].known)
        Py_RETURN_NONE;
    const spec_t *s = &SPECS[opcode];
    PyObject *unreserve = s->unreserve_flag
                              ? Py_BuildValue("((ki))", (unsigned long)s->unreserve_flag,
                                              s->unreserve_index)
                              : PyTuple_New(0);
    if (unreserve == NULL)
        return NULL;
    return Py_BuildValue("(kO(KKKKKK)N)", (unsigned long)s->opspec,
                         s->takes_cr ? Py_True : Py_False, s->reserved[0], s->reserved[1],
                         s->reserved[2], s->reserved[3], s->reserved[4], s->reserved[5],
                         unreserve);
}

static PyMethodDef methods[] = {
    {"run_one", run_one, METH_VARARGS, "run one descriptor (see the module comment)"},
    {"run_batch", run_batch, METH_VARARGS, "run batch entries (see the module comment)"},
    {"run_many", run_many, METH_VARARGS, "run queued descriptors (see the module comment)"},
    {"address", address, METH_O, "the address of a buffer's first byte"},
    {"spec", spec, METH_O, "the validation table entry of an opcode run here"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "The executor's common descriptors in C (see fastpath.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    crc_init();
    if (PyType_Ready(&PageCacheType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PageCacheType);
    if (PyModule_AddObject(m, "PageCache", (PyObject *)&PageCacheType) < 0) {
        Py_DECREF(&PageCacheType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "DONE", R_DONE);
    PyModule_AddIntConstant(m, "NEED", R_NEED);
    PyModule_AddIntConstant(m, "FALLBACK", R_FALLBACK);
    PyModule_AddIntConstant(m, "BUDGET", R_BUDGET);
    PyModule_AddIntConstant(m, "SLICE", SLICE);
    return m;
}
