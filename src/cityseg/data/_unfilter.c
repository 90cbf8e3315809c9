/* PNG scanline unfiltering (PNG spec section 9), tuned for label maps.
 *
 * Why by hand: decoding the three PNGs of a Cityscapes frame was ~2/3 of `cityseg evaluate
 * --pred-dir` (libspng 25 ms, Pillow 38 ms, Wuffs 16 ms per frame on one core). Two parts cost
 * that: zlib's inflate, which libdeflate (the `deflate` package) does 10-30x faster on these
 * files, and unfiltering, which every decoder does byte by byte. Label maps are long runs of one
 * value, so most 8-byte blocks of a Sub or Paeth scanline have zero residuals and a predictor
 * that provably repeats either the left pixel or the pixel above; this file fills those blocks
 * with one 64-bit store and handles every other byte exactly as the spec says.
 *
 * unfilter(raw, out, height, row_bytes, bpp, swap16): `raw` holds `height` filtered scanlines
 * of 1 + row_bytes bytes (the inflated IDAT data of a non-interlaced PNG); `out` (a separate,
 * writable buffer) receives the height * row_bytes reconstructed bytes. With swap16 (bpp 2) the
 * 16-bit samples are written in little-endian order instead of PNG's big-endian order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline void store64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* The 8 bytes that repeat the bpp bytes at p (bpp divides 8). */
static inline uint64_t periodic(const uint8_t *p, int bpp) {
    uint8_t b[8];
    for (int k = 0; k < 8; k++) b[k] = p[k % bpp];
    return load64(b);
}

static inline uint8_t paeth(int a, int b, int c) {
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    if (pa <= pb && pa <= pc) return (uint8_t)a;
    return (uint8_t)(pb <= pc ? b : c);
}

/* Sub: dst[x] = cur[x] + dst[x - bpp]. A zero block repeats the last bpp bytes. */
static void unfilter_sub(const uint8_t *cur, uint8_t *dst, size_t n, int bpp, int fast) {
    size_t x = 0;
    for (; x < (size_t)bpp && x < n; x++) dst[x] = cur[x];
    while (x < n) {
        if (fast && x + 8 <= n && load64(cur + x) == 0) {
            uint64_t pattern = periodic(dst + x - bpp, bpp);
            do {
                store64(dst + x, pattern);
                x += 8;
            } while (x + 8 <= n && load64(cur + x) == 0);
            continue;
        }
        dst[x] = (uint8_t)(cur[x] + dst[x - bpp]);
        x++;
    }
}

static void unfilter_up(const uint8_t *cur, const uint8_t *prev, uint8_t *dst, size_t n) {
    for (size_t x = 0; x < n; x++) dst[x] = (uint8_t)(cur[x] + prev[x]);
}

static void unfilter_average(const uint8_t *cur, const uint8_t *prev, uint8_t *dst, size_t n, int bpp) {
    size_t x = 0;
    for (; x < (size_t)bpp && x < n; x++) dst[x] = (uint8_t)(cur[x] + (prev[x] >> 1));
    for (; x < n; x++) dst[x] = (uint8_t)(cur[x] + ((dst[x - bpp] + prev[x]) >> 1));
}

/* Paeth with a = dst[x - bpp] (left), b = prev[x] (up), c = prev[x - bpp] (up-left). For a block
 * of 8 zero residuals:
 *   - if the last bpp reconstructed bytes equal the row above (a == c), then pb = 0, so the
 *     predictor is b (or a == b when pa = 0 too): the block copies the row above, and a == c
 *     still holds after it;
 *   - else if the row above repeats with period bpp over the block and the bpp bytes before it
 *     (b == c everywhere), then pa = 0, so the predictor is a: the block repeats the last bpp
 *     reconstructed bytes.
 * Anything else takes the byte-by-byte path. */
static void unfilter_paeth(const uint8_t *cur, const uint8_t *prev, uint8_t *dst, size_t n, int bpp, int fast) {
    size_t x = 0;
    for (; x < (size_t)bpp && x < n; x++) dst[x] = (uint8_t)(cur[x] + prev[x]); /* a = c = 0 */
    while (x < n) {
        if (fast && x + 8 <= n && load64(cur + x) == 0) {
            if (memcmp(dst + x - bpp, prev + x - bpp, (size_t)bpp) == 0) {
                do {
                    memcpy(dst + x, prev + x, 8);
                    x += 8;
                } while (x + 8 <= n && load64(cur + x) == 0);
                continue;
            }
            uint64_t above = periodic(prev + x - bpp, bpp);
            if (load64(prev + x) == above) {
                uint64_t pattern = periodic(dst + x - bpp, bpp);
                do {
                    store64(dst + x, pattern);
                    x += 8;
                } while (x + 8 <= n && load64(cur + x) == 0 && load64(prev + x) == above);
                continue;
            }
        }
        dst[x] = (uint8_t)(cur[x] + paeth(dst[x - bpp], prev[x], prev[x - bpp]));
        x++;
    }
}

static void swap16(uint8_t *row, size_t n) {
    for (size_t x = 0; x + 1 < n; x += 2) {
        uint8_t t = row[x];
        row[x] = row[x + 1];
        row[x + 1] = t;
    }
}

/* Returns -1 on success, else the index of the first row with an unknown filter type. */
static Py_ssize_t unfilter_image(const uint8_t *raw, uint8_t *out, const uint8_t *zeros, Py_ssize_t height,
                                 size_t n, int bpp, int swap) {
    int fast = 8 % bpp == 0;
    for (Py_ssize_t y = 0; y < height; y++) {
        const uint8_t *cur = raw + (size_t)y * (n + 1);
        const uint8_t *prev = y ? out + (size_t)(y - 1) * n : zeros;
        uint8_t *dst = out + (size_t)y * n;
        switch (cur[0]) {
        case 0: memcpy(dst, cur + 1, n); break;
        case 1: unfilter_sub(cur + 1, dst, n, bpp, fast); break;
        case 2: unfilter_up(cur + 1, prev, dst, n); break;
        case 3: unfilter_average(cur + 1, prev, dst, n, bpp); break;
        case 4: unfilter_paeth(cur + 1, prev, dst, n, bpp, fast); break;
        default: return y;
        }
        /* the row above is swapped only once the row below no longer needs its PNG byte order */
        if (swap && y) swap16(out + (size_t)(y - 1) * n, n);
    }
    if (swap && height) swap16(out + (size_t)(height - 1) * n, n);
    return -1;
}

static PyObject *unfilter(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer raw, out;
    Py_ssize_t height, row_bytes;
    int bpp, swap;
    if (!PyArg_ParseTuple(args, "y*w*nnip", &raw, &out, &height, &row_bytes, &bpp, &swap)) return NULL;
    PyObject *result = NULL;
    uint8_t *zeros = NULL;
    if (height < 0 || row_bytes < 1 || bpp < 1 || bpp > 8 || row_bytes % bpp || (swap && bpp != 2)) {
        PyErr_SetString(PyExc_ValueError, "unfilter: bad height, row_bytes, bpp or swap16 (swap16 needs bpp 2)");
        goto done;
    }
    /* the sizes below must not overflow before they are compared with the buffers */
    if (row_bytes > PY_SSIZE_T_MAX - 1 || (height && row_bytes + 1 > PY_SSIZE_T_MAX / height)) {
        PyErr_SetString(PyExc_ValueError, "unfilter: height * (row_bytes + 1) overflows");
        goto done;
    }
    if (raw.len != height * (row_bytes + 1) || out.len != height * row_bytes) {
        PyErr_Format(PyExc_ValueError, "unfilter: %zd filtered bytes for %zd rows of %zd (output %zd)", raw.len,
                     height, row_bytes, out.len);
        goto done;
    }
    const char *r0 = raw.buf, *o0 = out.buf;
    if (height && r0 < o0 + out.len && o0 < r0 + raw.len) {
        PyErr_SetString(PyExc_ValueError, "unfilter: raw and out overlap");
        goto done;
    }
    zeros = calloc((size_t)row_bytes, 1);
    if (!zeros) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = unfilter_image(raw.buf, out.buf, zeros, height, (size_t)row_bytes, bpp, swap);
    Py_END_ALLOW_THREADS
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "row %zd has filter type %d (valid: 0-4)", bad,
                     ((const uint8_t *)raw.buf)[bad * (row_bytes + 1)]);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    free(zeros);
    PyBuffer_Release(&raw);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"unfilter", unfilter, METH_VARARGS,
     "unfilter(raw, out, height, row_bytes, bpp, swap16): reconstruct PNG scanlines into out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_unfilter", "PNG scanline unfiltering.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__unfilter(void) {
    PyObject *m = PyModule_Create(&module);
#ifdef Py_GIL_DISABLED
    /* no global state: safe without the GIL on free-threaded Python */
    if (m) PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED);
#endif
    return m;
}
