/* The per-record loop of a one-group layout (windows.PartitionState._apply_group), compiled.
 *
 * It does what the Python loop does, step by step, on the same Python objects (the batch's
 * columns, the key entries' lists, the dicts of keys read and written), so the values, the
 * entries and the store changes are the same, bit for bit:
 *
 * - a sum is math.fsum called on the same list the Python code builds (the window's slice,
 *   then the current value), and exact_sum when it overflows; for a window of 16 entries or
 *   more, math.fsum's partials are kept with the key between its records (SumCache), which
 *   gives the same correctly rounded float;
 * - count, time_since_last and last are computed as the Python expressions compute them
 *   (float(int), an int true division done in doubles only where Python does it so too);
 * - a new key's KeyEntries is made as KeyEntries.first makes it (through its slots);
 * - every rarer step calls the Python function the loop calls (_late, _full, _too_large,
 *   _out_of_order, entries.window_value for std and distinct_count);
 * - mean, min and max of exact floats as entries.aggregate computes them (else it is called).
 *
 * A record it was not written for (a time or a key's newest time outside +-2**62, an object
 * of another type where the engine keeps a list) stops it before that record changes
 * anything: it returns the record's index and the Python loop applies the rest.
 *
 * Beside it, the steps around the loop that cost a bytecode per key or per record, each
 * doing what its Python does, in the same order (tests/unit/core/state/test_bookkeeping.py):
 * cache_keys and defer_keys (a batch's keys cached and made dirty), typed_group (a group's
 * columns in one pass, or None for the Python read).
 *
 * What a record is served goes into the batch's block (an array('d') of `width` doubles a
 * record, row after row, NaN where none is served), a rejected record's Served into the
 * `rejected` dict under its index: no object per record is made for what it was served.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <structmember.h>

#define MAX_TIME (((int64_t)1) << 62)
#define EXACT_DOUBLE (((int64_t)1) << 53)

enum { COUNT, SUM, TIME_SINCE_LAST, LAST, OTHER };
enum { AGG_PYTHON, AGG_MEAN, AGG_MIN, AGG_MAX }; /* an OTHER feature's aggregation */

typedef struct {
    Py_ssize_t index;
    int kind;
    Py_ssize_t slot;
    Py_ssize_t field;
    int include_current;
    int agg;
    Py_ssize_t sum_at;       /* a SUM's place among the group's SUMs (its SumCache), else -1 */
    PyObject *default_value; /* borrowed from the plan */
    PyObject *plan;          /* the FeaturePlan tuple, borrowed */
} Feature;

static PyObject *served_type, *key_entries_type, *late_fn, *full_fn, *too_large_fn,
    *out_of_order_fn, *value_fn, *exact_sum_fn, *fsum_fn, *first_fn;
static PyObject *str_newest_us, *str_times, *str_columns, *str_ordered, *str_sums;
static PyObject *empty_list, *empty_tuple;

/* Where KeyEntries keeps each slot (its __slots__' member descriptors), or -1: read by name. */
enum { NEWEST_US, TIMES, COLUMNS, ORDERED, SUMS, SLOTS };
static Py_ssize_t slot_offsets[SLOTS] = {-1, -1, -1, -1, -1};
static PyObject **slot_names[SLOTS] = {&str_newest_us, &str_times, &str_columns, &str_ordered,
                                       &str_sums};

/* getattr(state, name) of a KeyEntries, from its slot when the class keeps it in one. */
static PyObject *
get_slot(PyObject *state, int slot)
{
    if (slot_offsets[slot] >= 0) {
        PyObject *value = *(PyObject **)((char *)state + slot_offsets[slot]);
        if (value != NULL) {
            Py_INCREF(value);
            return value;
        }
    }
    return PyObject_GetAttr(state, *slot_names[slot]);
}

/* setattr(state, name, value) */
static int
set_slot(PyObject *state, int slot, PyObject *value)
{
    if (slot_offsets[slot] >= 0) {
        PyObject **at = (PyObject **)((char *)state + slot_offsets[slot]);
        PyObject *old = *at;
        Py_INCREF(value);
        *at = value;
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(state, *slot_names[slot], value);
}

/* -1, 0, 1 as `item` is below, equal to or above `value` (an int, as Python compares them). */
static int
compare_time(PyObject *item, int64_t value, int *error)
{
    if (PyLong_CheckExact(item)) {
        int overflow;
        long long got = PyLong_AsLongLongAndOverflow(item, &overflow);
        if (overflow) {
            return overflow;
        }
        if (got == -1 && PyErr_Occurred()) {
            *error = 1;
            return 0;
        }
        return (got > value) - (got < value);
    }
    PyObject *number = PyLong_FromLongLong(value);
    if (number == NULL) {
        *error = 1;
        return 0;
    }
    int above = PyObject_RichCompareBool(item, number, Py_GT);
    int below = above == 0 ? PyObject_RichCompareBool(item, number, Py_LT) : 0;
    Py_DECREF(number);
    if (above < 0 || below < 0) {
        *error = 1;
        return 0;
    }
    return above ? 1 : (below ? -1 : 0);
}

/* bisect.bisect_right(times, value, lo, hi) */
static Py_ssize_t
bisect_right(PyObject *times, int64_t value, Py_ssize_t lo, Py_ssize_t hi, int *error)
{
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        int order = compare_time(PyList_GET_ITEM(times, mid), value, error);
        if (*error) {
            return -1;
        }
        if (order > 0) {
            hi = mid;
        }
        else {
            lo = mid + 1;
        }
    }
    return lo;
}

/* bisect.bisect_right(times, value, 0, hi) of a list in order (times never decrease), found
 * from its front: probes 0, 1, 3, 7, ... then bisects the last run. The same index as the
 * bisection (one answer on a list in order), read from the entries it touches first: a
 * window's low end and the entries past the horizon are a few entries from the front, and
 * each probe of a bisection over a long list is an int far in memory (a cache miss). */
static Py_ssize_t
bisect_right_from_front(PyObject *times, int64_t value, Py_ssize_t hi, int *error)
{
    Py_ssize_t lo = 0, step = 1;
    while (lo < hi) {
        Py_ssize_t probe = lo + step - 1;
        if (probe >= hi) {
            return bisect_right(times, value, lo, hi, error);
        }
        int order = compare_time(PyList_GET_ITEM(times, probe), value, error);
        if (*error) {
            return -1;
        }
        if (order > 0) {
            return bisect_right(times, value, lo, probe, error);
        }
        lo = probe + 1;
        step *= 2;
    }
    return lo;
}

/* An int in (-2**62, 2**62), or 0 with *ok = 0. */
static int64_t
small_time(PyObject *value, int *ok)
{
    *ok = 0;
    if (!PyLong_CheckExact(value)) {
        return 0;
    }
    int overflow;
    long long got = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (got == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    if (got <= -MAX_TIME || got >= MAX_TIME) {
        return 0;
    }
    *ok = 1;
    return got;
}

#define NUM_PARTIALS 32

/* One step of math.fsum (CPython's msum, Modules/mathmodule.c): add x to the partials
 * ps[0:*n], non-overlapping and in increasing magnitude, whose exact sum grows by exactly x.
 * 0: a partial is not finite, or there would be more than NUM_PARTIALS (math.fsum's own
 * path then). */
static int
grow_partials(double *ps, int *n, double x)
{
    double y, t, hi, yr, lo;
    int i = 0;
    for (int j = 0; j < *n; j++) { /* for y in partials */
        y = ps[j];
        if (fabs(x) < fabs(y)) {
            t = x;
            x = y;
            y = t;
        }
        hi = x + y;
        yr = hi - x;
        lo = y - yr;
        if (lo != 0.0) {
            ps[i++] = lo;
        }
        x = hi;
    }
    *n = i; /* ps[i:] = [x] */
    if (x != 0.0) {
        if (!isfinite(x) || i >= NUM_PARTIALS) {
            return 0; /* a special sum, an overflow or a realloc */
        }
        ps[(*n)++] = x;
    }
    return 1;
}

/* The end of math.fsum: the partials' exact sum, correctly rounded (half even). */
static double
round_partials(const double *ps, int n)
{
    double x, y, yr, hi = 0.0, lo = 0.0;
    if (n > 0) {
        hi = ps[--n];
        /* sum_exact(ps, hi) from the top, stop when the sum becomes inexact. */
        while (n > 0) {
            x = hi;
            y = ps[--n];
            hi = x + y;
            yr = hi - x;
            lo = y - yr;
            if (lo != 0.0) {
                break;
            }
        }
        /* Make half-even rounding work across multiple partials. */
        if (n > 0 && ((lo < 0.0 && ps[n - 1] < 0.0) || (lo > 0.0 && ps[n - 1] > 0.0))) {
            y = lo * 2.0;
            x = hi + y;
            yr = x - hi;
            if (y == yr) {
                hi = x;
            }
        }
    }
    return hi;
}

/* math.fsum over floats, CPython's algorithm step for step, for the case it is written for:
 * every item an exact float, every partial sum finite, at most NUM_PARTIALS partials.
 * Anything else (an int or a text, an infinity or a nan, an intermediate overflow, more
 * partials) returns 0, and the caller calls math.fsum itself. */
static int
exact_float_sum(PyObject **items, Py_ssize_t count, PyObject *current, double *sum)
{
    double ps[NUM_PARTIALS];
    int n = 0;
    Py_ssize_t total = count + (current != NULL);
    for (Py_ssize_t at = 0; at < total; at++) { /* for x in iterable */
        PyObject *item = at < count ? items[at] : current;
        if (!PyFloat_CheckExact(item) || !grow_partials(ps, &n, PyFloat_AS_DOUBLE(item))) {
            return 0;
        }
    }
    *sum = round_partials(ps, n);
    return 1;
}

/* A key's window sums kept between its records (the `sums` slot of its KeyEntries: a
 * bytearray of one SumCache per SUM feature of the group): the partials of the exact sum
 * of column[a:b). A record whose window is column[lo:hi) with a <= lo <= b <= hi adds
 * column[b:hi) to them and subtracts column[a:lo): the partials stay exact, so their
 * correctly rounded sum is the float math.fsum gives for the window, bit for bit, for the
 * cost of the entries that came and went instead of the whole window. Only the loop's
 * appends and its drop_front (shift_sums) change a cached key's lists; every other change
 * (KeyEntries.drop, the only other way entries leave) sets the slot to None. */
typedef struct {
    Py_ssize_t a, b;
    int n, valid;
    double ps[NUM_PARTIALS];
} SumCache;

#define SUM_CACHE_FROM 16 /* a window of fewer entries is summed whole, no cache made for it */

/* fsum(column[lo:hi] + [current]) from the key's SumCache, into *total: 1; 0 when it
 * cannot (window_sum then), -1 when Python raised. */
static int
cached_window_sum(PyObject *state, Py_ssize_t sum_at, Py_ssize_t nsums, PyObject *column,
                  Py_ssize_t lo, Py_ssize_t hi, int include_current, PyObject *current,
                  double *total)
{
    if (state == NULL || hi - lo < SUM_CACHE_FROM
        || (include_current && !PyFloat_CheckExact(current))) {
        return 0;
    }
    PyObject *sums = get_slot(state, SUMS);
    if (sums == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear(); /* a KeyEntries made without __init__: none yet */
    }
    Py_ssize_t size = nsums * (Py_ssize_t)sizeof(SumCache);
    if (sums == NULL || !PyByteArray_CheckExact(sums) || PyByteArray_GET_SIZE(sums) != size) {
        Py_XDECREF(sums);
        sums = PyByteArray_FromStringAndSize(NULL, size);
        if (sums == NULL) {
            return -1;
        }
        memset(PyByteArray_AS_STRING(sums), 0, (size_t)size); /* none valid */
        if (set_slot(state, SUMS, sums) < 0) {
            Py_DECREF(sums);
            return -1;
        }
    }
    SumCache *cache = (SumCache *)PyByteArray_AS_STRING(sums) + sum_at;
    PyObject **items = ((PyListObject *)column)->ob_item;
    if (!cache->valid || cache->a > lo || lo > cache->b || cache->b > hi) {
        cache->n = 0; /* from scratch */
        cache->a = cache->b = lo;
    }
    cache->valid = 0;
    int ok = 1;
    for (Py_ssize_t i = cache->b; i < hi && ok; i++) { /* the entries that came */
        ok = PyFloat_CheckExact(items[i]) && grow_partials(cache->ps, &cache->n,
                                                           PyFloat_AS_DOUBLE(items[i]));
    }
    for (Py_ssize_t i = cache->a; i < lo && ok; i++) { /* the entries that left the window */
        ok = PyFloat_CheckExact(items[i]) && grow_partials(cache->ps, &cache->n,
                                                           -PyFloat_AS_DOUBLE(items[i]));
    }
    double ps[NUM_PARTIALS];
    int n = cache->n;
    if (ok) {
        cache->a = lo;
        cache->b = hi;
        cache->valid = 1;
        memcpy(ps, cache->ps, (size_t)n * sizeof(double));
        ok = !include_current || grow_partials(ps, &n, PyFloat_AS_DOUBLE(current));
    }
    Py_DECREF(sums);
    if (!ok) {
        return 0;
    }
    double sum = round_partials(ps, n);
    if (!isfinite(sum)) {
        return 0; /* an overflow: exact_sum's */
    }
    *total = sum;
    return 1;
}

/* After drop_front(count) of a key's lists: its cached sums' places move down with them. */
static void
shift_sums(PyObject *state, Py_ssize_t count)
{
    if (slot_offsets[SUMS] < 0) {
        return;
    }
    PyObject *sums = *(PyObject **)((char *)state + slot_offsets[SUMS]);
    if (sums == NULL || !PyByteArray_CheckExact(sums)) {
        return;
    }
    SumCache *caches = (SumCache *)PyByteArray_AS_STRING(sums);
    Py_ssize_t ncaches = PyByteArray_GET_SIZE(sums) / (Py_ssize_t)sizeof(SumCache);
    for (Py_ssize_t k = 0; k < ncaches; k++) {
        if (caches[k].a < count) {
            caches[k].valid = 0; /* never: a window starts at or above what is dropped */
        }
        else {
            caches[k].a -= count;
            caches[k].b -= count;
        }
    }
}

/* fsum(column[lo:hi] + [current]) (or without current), exact_sum where fsum overflows. */
static PyObject *
window_sum(PyObject *column, Py_ssize_t lo, Py_ssize_t hi, int include_current, PyObject *current)
{
    double sum;
    if (exact_float_sum(((PyListObject *)column)->ob_item + lo, hi - lo,
                        include_current ? current : NULL, &sum)) {
        return PyFloat_FromDouble(sum);
    }
    Py_ssize_t n = hi - lo + (include_current ? 1 : 0);
    PyObject *seen = PyList_New(n);
    if (seen == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = lo; i < hi; i++) {
        PyObject *item = PyList_GET_ITEM(column, i);
        Py_INCREF(item);
        PyList_SET_ITEM(seen, i - lo, item);
    }
    if (include_current) {
        Py_INCREF(current);
        PyList_SET_ITEM(seen, n - 1, current);
    }
    PyObject *total = PyObject_CallOneArg(fsum_fn, seen);
    if (total == NULL && PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();
        total = PyObject_CallOneArg(exact_sum_fn, seen);
    }
    Py_DECREF(seen);
    return total;
}

/* (time_us - newest) / 1_000_000 into *seconds where Python divides two doubles: 1; else 0. */
static int
exact_seconds_since(int64_t time_us, PyObject *newest, double *seconds)
{
    if (PyLong_CheckExact(newest)) {
        int overflow;
        long long got = PyLong_AsLongLongAndOverflow(newest, &overflow);
        if (!overflow && !(got == -1 && PyErr_Occurred()) && got > -MAX_TIME && got < MAX_TIME) {
            int64_t diff = time_us - (int64_t)got;
            if (diff > -EXACT_DOUBLE && diff < EXACT_DOUBLE) {
                /* int / int of two ints exact in a double: Python divides the doubles */
                *seconds = (double)diff / 1000000.0;
                return 1;
            }
        }
        PyErr_Clear();
    }
    return 0;
}

/* (time_us - newest) / 1_000_000 as Python computes it. */
static PyObject *
seconds_since(int64_t time_us, PyObject *newest)
{
    double exact;
    if (exact_seconds_since(time_us, newest, &exact)) {
        return PyFloat_FromDouble(exact);
    }
    PyObject *now = PyLong_FromLongLong(time_us);
    if (now == NULL) {
        return NULL;
    }
    PyObject *diff = PyNumber_Subtract(now, newest);
    Py_DECREF(now);
    if (diff == NULL) {
        return NULL;
    }
    PyObject *million = PyLong_FromLong(1000000);
    if (million == NULL) {
        Py_DECREF(diff);
        return NULL;
    }
    PyObject *seconds = PyNumber_TrueDivide(diff, million);
    Py_DECREF(diff);
    Py_DECREF(million);
    return seconds;
}

/* float(value) */
static PyObject *
as_float(PyObject *value)
{
    if (PyFloat_CheckExact(value)) {
        Py_INCREF(value);
        return value;
    }
    return PyNumber_Float(value);
}

/* mean, min and max of a window of exact floats, as entries.aggregate computes them:
 * min(numbers) and max(numbers) keep the first of equal values (their object), the mean is
 * exact_sum(numbers) / len(numbers). NULL without an error: the Python function computes it
 * (another aggregation, or an item that is not an exact float). */
static PyObject *
floats_aggregate(int agg, PyObject *column, Py_ssize_t lo, Py_ssize_t hi, int include_current,
                 PyObject *current, PyObject *default_value)
{
    if (agg != AGG_MEAN && agg != AGG_MIN && agg != AGG_MAX) {
        return NULL;
    }
    Py_ssize_t count = hi - lo + (include_current ? 1 : 0);
    PyObject **items = ((PyListObject *)column)->ob_item + lo;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyFloat_CheckExact(i < hi - lo ? items[i] : current)) {
            return NULL;
        }
    }
    if (count == 0) {
        Py_INCREF(default_value);
        return default_value;
    }
    if (agg == AGG_MEAN) {
        PyObject *total = window_sum(column, lo, hi, include_current, current);
        if (total == NULL) {
            return NULL; /* its error, as exact_sum raises it */
        }
        double mean = PyFloat_AsDouble(total) / (double)count;
        Py_DECREF(total);
        return PyFloat_FromDouble(mean);
    }
    PyObject *best = hi > lo ? items[0] : current;
    for (Py_ssize_t i = 1; i < count; i++) {
        PyObject *item = i < hi - lo ? items[i] : current;
        double x = PyFloat_AS_DOUBLE(item), y = PyFloat_AS_DOUBLE(best);
        if (agg == AGG_MIN ? x < y : x > y) {
            best = item;
        }
    }
    Py_INCREF(best);
    return best;
}

/* Each feature's value into `row` (the record's doubles in the batch's block, at the
 * feature's index): entries.feature_values for an ordered window [los[slot], hi) of `times`
 * and `columns` (empty lists for a key without entries). A value is the double of the float
 * the Python loop computes (float(value) of any other number, as array('d') takes it). */
static int
compute_values(Feature *features, Py_ssize_t nfeatures, Py_ssize_t *los, Py_ssize_t hi,
               PyObject *times, PyObject *columns, int64_t time_us, PyObject *fields,
               double *row, PyObject *state, Py_ssize_t nsums)
{
    for (Py_ssize_t f = 0; f < nfeatures; f++) {
        Feature *feature = &features[f];
        Py_ssize_t lo = los[feature->slot];
        PyObject *value = NULL;
        switch (feature->kind) {
        case COUNT:
            row[feature->index] = (double)(hi - lo + feature->include_current);
            continue;
        case SUM: {
            PyObject *column = PyList_GET_ITEM(columns, feature->field);
            PyObject *current = PyTuple_GET_ITEM(fields, feature->field);
            double sum;
            int cached = cached_window_sum(state, feature->sum_at, nsums, column, lo, hi,
                                           feature->include_current, current, &sum);
            if (cached < 0) {
                return -1;
            }
            if (cached || exact_float_sum(((PyListObject *)column)->ob_item + lo, hi - lo,
                                          feature->include_current ? current : NULL, &sum)) {
                row[feature->index] = sum; /* the double fsum's float holds */
                continue;
            }
            value = window_sum(column, lo, hi, feature->include_current, current);
            break;
        }
        case TIME_SINCE_LAST:
            if (lo == hi) {
                value = feature->default_value;
                Py_INCREF(value);
            }
            else if (exact_seconds_since(time_us, PyList_GET_ITEM(times, hi - 1),
                                         &row[feature->index])) {
                continue;
            }
            else {
                value = seconds_since(time_us, PyList_GET_ITEM(times, hi - 1));
            }
            break;
        case LAST:
            if (feature->include_current) {
                value = as_float(PyTuple_GET_ITEM(fields, feature->field));
            }
            else if (lo == hi) {
                value = feature->default_value;
                Py_INCREF(value);
            }
            else {
                value = as_float(PyList_GET_ITEM(PyList_GET_ITEM(columns, feature->field), hi - 1));
            }
            break;
        default: {
            value = floats_aggregate(feature->agg, PyList_GET_ITEM(columns, feature->field), lo, hi,
                                     feature->include_current,
                                     PyTuple_GET_ITEM(fields, feature->field),
                                     feature->default_value);
            if (value != NULL || PyErr_Occurred()) {
                break;
            }
            PyObject *args[8];
            PyObject *kind = PyLong_FromLong(feature->kind);
            PyObject *py_lo = PyLong_FromSsize_t(lo);
            PyObject *py_hi = PyLong_FromSsize_t(hi);
            if (kind != NULL && py_lo != NULL && py_hi != NULL) {
                args[0] = kind;
                args[1] = py_lo;
                args[2] = py_hi;
                args[3] = times;
                args[4] = PyList_GET_ITEM(columns, feature->field);
                args[5] = Py_True;
                args[6] = PyTuple_GET_ITEM(fields, feature->field);
                args[7] = feature->plan;
                value = PyObject_Vectorcall(value_fn, args, 8, NULL);
            }
            Py_XDECREF(kind);
            Py_XDECREF(py_lo);
            Py_XDECREF(py_hi);
        }
        }
        if (value == NULL) {
            return -1;
        }
        double number = PyFloat_AsDouble(value);
        Py_DECREF(value);
        if (number == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        row[feature->index] = number;
    }
    return 0;
}

/* _out_of_order(plan, state, time_obj, fields, values) on the record's row: the values as a
 * list of floats, as the Python loop passes it, and back into the row. */
static int
out_of_order_row(PyObject *plan, PyObject *state, PyObject *time_obj, PyObject *fields,
                 double *row, Py_ssize_t width)
{
    PyObject *list = PyList_New(width);
    if (list == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < width; i++) {
        PyObject *value = PyFloat_FromDouble(row[i]);
        if (value == NULL) {
            Py_DECREF(list);
            return -1;
        }
        PyList_SET_ITEM(list, i, value);
    }
    PyObject *call[5] = {plan, state, time_obj, fields, list};
    PyObject *nothing = PyObject_Vectorcall(out_of_order_fn, call, 5, NULL);
    int failed = nothing == NULL || PyList_GET_SIZE(list) != width;
    Py_XDECREF(nothing);
    for (Py_ssize_t i = 0; i < width && !failed; i++) {
        row[i] = PyFloat_AsDouble(PyList_GET_ITEM(list, i));
        failed = row[i] == -1.0 && PyErr_Occurred();
    }
    if (nothing != NULL && PyList_GET_SIZE(list) != width && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_RuntimeError, "_out_of_order changed the length of the values");
    }
    Py_DECREF(list);
    return failed ? -1 : 0;
}

/* rejected[at] = outcome (a new reference, consumed; NULL: the call that made it failed). */
static int
reject_row(PyObject *rejected, Py_ssize_t at, PyObject *outcome)
{
    if (outcome == NULL) {
        return -1;
    }
    PyObject *index = PyLong_FromSsize_t(at);
    int failed = index == NULL || PyDict_SetItem(rejected, index, outcome) < 0;
    Py_XDECREF(index);
    Py_DECREF(outcome);
    return failed ? -1 : 0;
}

static int
key_columns_ok(PyObject *state, Py_ssize_t nfields, PyObject **times, PyObject **columns)
{
    *times = get_slot(state, TIMES);
    if (*times == NULL) {
        return -1;
    }
    *columns = get_slot(state, COLUMNS);
    if (*columns == NULL) {
        Py_CLEAR(*times);
        return -1;
    }
    if (!PyList_CheckExact(*times) || !PyList_CheckExact(*columns)
        || PyList_GET_SIZE(*columns) != nfields) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < nfields; i++) {
        PyObject *column = PyList_GET_ITEM(*columns, i);
        if (!PyList_CheckExact(column) || PyList_GET_SIZE(column) != PyList_GET_SIZE(*times)) {
            return 0;
        }
    }
    return 1;
}

/* KeyEntries.first(time_us, fields): KeyEntries(time_us, [time_us], [[v] for v in fields]),
 * whose times are in order; made as its __init__ leaves it when the class keeps its four
 * attributes in slots, else by the classmethod. */
static PyObject *
first_entry(PyObject *time_obj, PyObject *fields, Py_ssize_t nfields)
{
    int slots = 1;
    for (int slot = 0; slot < SLOTS; slot++) {
        slots = slots && slot_offsets[slot] >= 0;
    }
    if (!slots) {
        PyObject *call[2] = {time_obj, fields};
        return PyObject_Vectorcall(first_fn, call, 2, NULL);
    }
    PyTypeObject *type = (PyTypeObject *)key_entries_type;
    PyObject *entries = type->tp_new(type, empty_tuple, NULL);
    PyObject *times = PyList_New(1);
    PyObject *columns = PyList_New(nfields);
    if (entries == NULL || times == NULL || columns == NULL) {
        goto failed;
    }
    Py_INCREF(time_obj);
    PyList_SET_ITEM(times, 0, time_obj);
    for (Py_ssize_t i = 0; i < nfields; i++) {
        PyObject *column = PyList_New(1);
        if (column == NULL) {
            goto failed;
        }
        PyObject *value = PyTuple_GET_ITEM(fields, i);
        Py_INCREF(value);
        PyList_SET_ITEM(column, 0, value);
        PyList_SET_ITEM(columns, i, column);
    }
    /* __init__'s order: newest_us, times, columns, ordered (one entry: in order), sums */
    if (set_slot(entries, NEWEST_US, time_obj) < 0 || set_slot(entries, TIMES, times) < 0
        || set_slot(entries, COLUMNS, columns) < 0 || set_slot(entries, ORDERED, Py_True) < 0
        || set_slot(entries, SUMS, Py_None) < 0) {
        goto failed;
    }
    Py_DECREF(times);
    Py_DECREF(columns);
    return entries;
failed:
    Py_XDECREF(entries);
    Py_XDECREF(times);
    Py_XDECREF(columns);
    return NULL;
}

/* Delete items [0, count) of a list (`del items[:count]`). */
static int
drop_front(PyObject *items, Py_ssize_t count)
{
    return count ? PyList_SetSlice(items, 0, count, NULL) : 0;
}

static PyObject *
apply_group(PyObject *self, PyObject *args)
{
    PyObject *features_obj, *windows_obj, *store_keys, *times_us, *rows, *bad, *keys, *cache,
        *load, *clock_obj, *written, *block, *rejected, *plan;
    long long horizon, ttl, max_entries, lateness;
    Py_ssize_t width, nfields;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO!O!LLLLnnO!O!O!O!O!OOOO!OO!", &plan, &PyTuple_Type,
                          &features_obj, &PyTuple_Type, &windows_obj, &horizon, &ttl,
                          &max_entries, &lateness, &width, &nfields, &PyList_Type, &store_keys,
                          &PyList_Type, &times_us, &PyList_Type, &rows, &PyDict_Type, &bad,
                          &PyDict_Type, &keys, &cache, &load, &clock_obj, &PyDict_Type, &written,
                          &block, &PyDict_Type, &rejected)) {
        return NULL;
    }
    if (served_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_engine.bind() was not called");
        return NULL;
    }
    if (!PyDict_CheckExact(cache)) {
        PyErr_SetString(PyExc_TypeError, "cache must be a dict");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(store_keys);
    if (PyList_GET_SIZE(times_us) != count || PyList_GET_SIZE(rows) != count) {
        PyErr_SetString(PyExc_ValueError, "the columns differ in length");
        return NULL;
    }
    /* The batch's served values: `width` doubles a record, row after row (an array('d')). */
    Py_buffer view;
    if (PyObject_GetBuffer(block, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    if (view.itemsize != (Py_ssize_t)sizeof(double) || view.format == NULL
        || strcmp(view.format, "d") != 0 || width < 0
        || (width && count > view.len / (Py_ssize_t)sizeof(double) / width)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the block must hold width doubles per record");
        return NULL;
    }
    double *out = (double *)view.buf;
    Py_ssize_t nfeatures = PyTuple_GET_SIZE(features_obj);
    Py_ssize_t nwindows = PyTuple_GET_SIZE(windows_obj);
    Feature *features = PyMem_Calloc(nfeatures ? nfeatures : 1, sizeof(Feature));
    int64_t *windows = PyMem_Calloc(nwindows ? nwindows : 1, sizeof(int64_t));
    Py_ssize_t *los = PyMem_Calloc(nwindows ? nwindows : 1, sizeof(Py_ssize_t));
    Py_ssize_t *no_los = PyMem_Calloc(nwindows ? nwindows : 1, sizeof(Py_ssize_t));
    PyObject *no_columns = NULL;
    PyObject *clock = clock_obj;
    Py_INCREF(clock);
    Py_ssize_t at = 0;
    Py_ssize_t nsums = 0;
    int failed = 1;
    if (features == NULL || windows == NULL || los == NULL || no_los == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t w = 0; w < nwindows; w++) {
        int ok;
        windows[w] = small_time(PyTuple_GET_ITEM(windows_obj, w), &ok);
        if (!ok || windows[w] < 0) {
            PyErr_SetString(PyExc_ValueError, "a window outside [0, 2**62)");
            goto done;
        }
    }
    for (Py_ssize_t f = 0; f < nfeatures; f++) {
        PyObject *item = PyTuple_GET_ITEM(features_obj, f);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 7) {
            PyErr_SetString(PyExc_TypeError, "a feature plan is a 7-tuple");
            goto done;
        }
        features[f].index = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 0));
        features[f].kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        features[f].slot = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2));
        features[f].field = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 3));
        features[f].include_current = PyObject_IsTrue(PyTuple_GET_ITEM(item, 4));
        features[f].default_value = PyTuple_GET_ITEM(item, 5);
        features[f].plan = item;
        features[f].sum_at = features[f].kind == SUM ? nsums++ : -1;
        PyObject *agg = PyTuple_GET_ITEM(item, 6);
        features[f].agg = !PyUnicode_Check(agg)                        ? AGG_PYTHON
                          : PyUnicode_CompareWithASCIIString(agg, "mean") == 0 ? AGG_MEAN
                          : PyUnicode_CompareWithASCIIString(agg, "min") == 0  ? AGG_MIN
                          : PyUnicode_CompareWithASCIIString(agg, "max") == 0  ? AGG_MAX
                                                                               : AGG_PYTHON;
        if (PyErr_Occurred()) {
            goto done;
        }
        if (features[f].index < 0 || features[f].index >= width || features[f].slot < 0
            || features[f].slot >= nwindows
            || ((features[f].kind != COUNT && features[f].kind != TIME_SINCE_LAST)
                && (features[f].field < 0 || features[f].field >= nfields))) {
            PyErr_SetString(PyExc_ValueError, "a feature plan out of range");
            goto done;
        }
    }
    no_columns = PyList_New(nfields);
    if (no_columns == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < nfields; i++) {
        PyList_SET_ITEM(no_columns, i, empty_list);
        Py_INCREF(empty_list);
    }
    int64_t clock_us = 0;
    int has_clock = clock != Py_None;
    if (has_clock) {
        int ok;
        clock_us = small_time(clock, &ok);
        if (!ok) {
            failed = 0; /* the Python loop applies the whole batch */
            goto done;
        }
    }
    Py_ssize_t bad_count = PyDict_GET_SIZE(bad);
    for (at = 0; at < count; at++) {
        PyObject *store_key = PyList_GET_ITEM(store_keys, at);
        PyObject *time_obj = PyList_GET_ITEM(times_us, at);
        PyObject *fields = PyList_GET_ITEM(rows, at);
        if (bad_count) {
            PyObject *index = PyLong_FromSsize_t(at);
            if (index == NULL) {
                goto done;
            }
            PyObject *problem = PyDict_GetItemWithError(bad, index);
            Py_DECREF(index);
            if (problem != NULL) {
                PyObject *reason = PyObject_GetAttrString(problem, "reason");
                PyObject *detail = reason ? PyObject_GetAttrString(problem, "detail") : NULL;
                PyObject *outcome = NULL;
                if (detail != NULL) {
                    PyObject *call[3] = {Py_None, reason, detail};
                    outcome = PyObject_Vectorcall(served_type, call, 3, NULL);
                }
                Py_XDECREF(reason);
                Py_XDECREF(detail);
                if (reject_row(rejected, at, outcome) < 0) {
                    goto done;
                }
                continue; /* its row stays as it is (NaN) */
            }
            if (PyErr_Occurred()) {
                goto done;
            }
        }
        int ok;
        int64_t time_us = small_time(time_obj, &ok);
        if (!ok || !PyTuple_CheckExact(fields) || PyTuple_GET_SIZE(fields) != nfields) {
            break; /* the Python loop applies the rest */
        }
        PyObject *state = PyDict_GetItemWithError(keys, store_key); /* borrowed */
        if (state == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            PyObject *cached = PyDict_GetItemWithError(cache, store_key);
            if (cached == NULL && PyErr_Occurred()) {
                goto done;
            }
            PyObject *loaded;
            if (cached != NULL) {
                Py_INCREF(cached);
                loaded = cached;
            }
            else {
                loaded = PyObject_CallOneArg(load, store_key);
            }
            if (loaded == NULL) {
                goto done;
            }
            if (PyDict_SetItem(keys, store_key, loaded) < 0) {
                Py_DECREF(loaded);
                goto done;
            }
            Py_DECREF(loaded);
            state = loaded; /* keys holds it */
        }
        Py_INCREF(state);
        PyObject *times = NULL, *columns = NULL, *newest_obj = NULL;
        int64_t newest = 0;
        int empty = state == Py_None;
        int ordered = 0;
        if (!empty) {
            if (Py_TYPE(state) != (PyTypeObject *)key_entries_type) {
                Py_DECREF(state);
                break;
            }
            newest_obj = get_slot(state, NEWEST_US);
            if (newest_obj == NULL) {
                Py_DECREF(state);
                goto done;
            }
            newest = small_time(newest_obj, &ok);
            int shape = ok ? key_columns_ok(state, nfields, &times, &columns) : 0;
            if (shape <= 0) {
                Py_DECREF(state);
                Py_DECREF(newest_obj);
                Py_XDECREF(times);
                Py_XDECREF(columns);
                if (shape < 0) {
                    goto done;
                }
                break;
            }
            PyObject *ordered_obj = get_slot(state, ORDERED);
            ordered = ordered_obj == NULL ? -1
                      : ordered_obj == Py_True ? 1
                      : ordered_obj == Py_False ? 0
                                                 : PyObject_IsTrue(ordered_obj);
            Py_XDECREF(ordered_obj);
            if (ordered < 0) {
                Py_DECREF(state);
                Py_DECREF(newest_obj);
                Py_DECREF(times);
                Py_DECREF(columns);
                goto done;
            }
        }
        PyObject *outcome = NULL; /* a rejection */
        double *row = out + at * width;
        int step_failed = 1;
        if (!empty) {
            if (has_clock && newest < clock_us - ttl) {
                empty = 1; /* past its TTL: it reads as empty */
            }
            else if (time_us < newest - lateness) {
                PyObject *behind = PyLong_FromLongLong(newest - time_us);
                PyObject *allowed = PyLong_FromLongLong(lateness);
                if (behind != NULL && allowed != NULL) {
                    PyObject *call[2] = {behind, allowed};
                    outcome = PyObject_Vectorcall(late_fn, call, 2, NULL);
                }
                Py_XDECREF(behind);
                Py_XDECREF(allowed);
                goto record_done;
            }
            else if (PyList_GET_SIZE(times) >= max_entries) {
                PyObject *keep = PyLong_FromLongLong((newest > time_us ? newest : time_us) - horizon);
                PyObject *most = PyLong_FromLongLong(max_entries);
                int full = -1;
                if (keep != NULL && most != NULL) {
                    PyObject *call[3] = {state, keep, most};
                    PyObject *answer = PyObject_Vectorcall(full_fn, call, 3, NULL);
                    full = answer == NULL ? -1 : PyObject_IsTrue(answer);
                    Py_XDECREF(answer);
                }
                if (full != 0) {
                    if (full > 0) {
                        PyObject *call[1] = {most};
                        outcome = PyObject_Vectorcall(too_large_fn, call, 1, NULL);
                    }
                    Py_XDECREF(keep);
                    Py_XDECREF(most);
                    goto record_done;
                }
                Py_XDECREF(keep);
                Py_XDECREF(most);
            }
        }
        for (Py_ssize_t i = 0; i < width; i++) {
            row[i] = 0.0; /* the Python loop's [0.0] * width */
        }
        if (empty) { /* new, or past its TTL: only this entry */
            if (compute_values(features, nfeatures, no_los, 0, empty_list, no_columns, time_us,
                               fields, row, NULL, nsums) < 0) {
                goto record_done;
            }
            PyObject *first = first_entry(time_obj, fields, nfields);
            if (first == NULL) {
                goto record_done;
            }
            int set = PyDict_SetItem(keys, store_key, first);
            Py_DECREF(first);
            if (set < 0) {
                goto record_done;
            }
        }
        else if (ordered && time_us >= newest) { /* KeyEntries.bounds and .add, inline */
            Py_ssize_t hi = PyList_GET_SIZE(times);
            int error = 0;
            int64_t keep_above = time_us - horizon;
            Py_ssize_t drop = -1; /* the entries at or below keep_above, once known */
            for (Py_ssize_t w = 0; w < nwindows; w++) {
                los[w] = bisect_right_from_front(times, time_us - windows[w], hi, &error);
                if (error) {
                    goto record_done;
                }
                if (windows[w] == horizon) {
                    drop = los[w]; /* the same bisection */
                }
            }
            if (compute_values(features, nfeatures, los, hi, times, columns, time_us, fields,
                               row, state, nsums) < 0) {
                goto record_done;
            }
            if (drop < 0) {
                drop = hi > 0 && compare_time(PyList_GET_ITEM(times, 0), keep_above, &error) <= 0
                           ? bisect_right_from_front(times, keep_above, hi, &error)
                           : 0;
            }
            if (error) {
                goto record_done;
            }
            if (drop > 0) {
                /* state.drop(keep_above), ordered: in place, the lists stay the same */
                if (drop_front(times, drop) < 0) {
                    goto record_done;
                }
                for (Py_ssize_t i = 0; i < nfields; i++) {
                    if (drop_front(PyList_GET_ITEM(columns, i), drop) < 0) {
                        goto record_done;
                    }
                }
                shift_sums(state, drop);
            }
            if (set_slot(state, NEWEST_US, time_obj) < 0
                || PyList_Append(times, time_obj) < 0) {
                goto record_done;
            }
            for (Py_ssize_t i = 0; i < nfields; i++) {
                if (PyList_Append(PyList_GET_ITEM(columns, i), PyTuple_GET_ITEM(fields, i)) < 0) {
                    goto record_done;
                }
            }
        }
        else if (out_of_order_row(plan, state, time_obj, fields, row, width) < 0) {
            goto record_done;
        }
        if (PyDict_SetItem(written, store_key, Py_None) < 0) {
            goto record_done;
        }
        if (!has_clock || time_us > clock_us) {
            clock_us = time_us;
            has_clock = 1;
            Py_INCREF(time_obj);
            Py_SETREF(clock, time_obj);
        }
        step_failed = 0;
    record_done:
        if (outcome != NULL) { /* late or too large: its row back to NaN, as it was */
            for (Py_ssize_t i = 0; i < width; i++) {
                row[i] = Py_NAN;
            }
            step_failed = reject_row(rejected, at, outcome) < 0;
        }
        Py_DECREF(state);
        Py_XDECREF(newest_obj);
        Py_XDECREF(times);
        Py_XDECREF(columns);
        if (step_failed) {
            goto done;
        }
    }
    failed = 0;
done:
    PyBuffer_Release(&view);
    PyMem_Free(features);
    PyMem_Free(windows);
    PyMem_Free(los);
    PyMem_Free(no_los);
    Py_XDECREF(no_columns);
    if (failed) {
        Py_DECREF(clock);
        return NULL;
    }
    PyObject *result = Py_BuildValue("(nN)", at, clock);
    return result;
}

static PyObject *
bind(PyObject *self, PyObject *args)
{
    PyObject *served, *entries, *late, *full, *too_large, *out_of_order, *value, *exact_sum, *fsum,
        *first;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO", &served, &entries, &late, &full, &too_large,
                          &out_of_order, &value, &exact_sum, &fsum, &first)) {
        return NULL;
    }
    if (!PyType_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "KeyEntries must be a class");
        return NULL;
    }
    for (int slot = 0; slot < SLOTS; slot++) {
        PyObject *descriptor = PyObject_GetAttr(entries, *slot_names[slot]);
        if (descriptor == NULL) {
            return NULL;
        }
        slot_offsets[slot] = -1;
        if (Py_IS_TYPE(descriptor, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descriptor)->d_member;
            if (member->type == T_OBJECT_EX && !(member->flags & READONLY)) {
                slot_offsets[slot] = member->offset;
            }
        }
        Py_DECREF(descriptor);
    }
    PyObject **slots[] = {&served_type, &key_entries_type, &late_fn, &full_fn, &too_large_fn,
                          &out_of_order_fn, &value_fn, &exact_sum_fn, &fsum_fn, &first_fn};
    PyObject *given[] = {served,       entries, late,      full, too_large,
                         out_of_order, value,   exact_sum, fsum, first};
    for (size_t i = 0; i < sizeof(given) / sizeof(given[0]); i++) {
        Py_INCREF(given[i]);
        Py_XSETREF(*slots[i], given[i]);
    }
    Py_RETURN_NONE;
}

/* window_sum over a list, for the tests: the compiled sum against math.fsum. */
static PyObject *
float_sum(PyObject *self, PyObject *values)
{
    (void)self;
    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "a list");
        return NULL;
    }
    if (fsum_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_engine.bind() was not called");
        return NULL;
    }
    return window_sum(values, 0, PyList_GET_SIZE(values), 0, NULL);
}

/* len(state.times) of a KeyEntries, or -1 with an exception. */
static Py_ssize_t
entries_held(PyObject *state)
{
    PyObject *times = get_slot(state, TIMES);
    if (times == NULL) {
        return -1;
    }
    Py_ssize_t held = PyObject_Length(times);
    Py_DECREF(times);
    return held;
}

/* PartitionState._cache_keys's loop (see it there): the same dict operations, in the same
 * order, without a bytecode per key. */
static PyObject *
cache_keys(PyObject *self, PyObject *args)
{
    PyObject *keys, *new_keys, *cache, *sizes;
    Py_ssize_t cached, limit;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OO!O!nn", &PyDict_Type, &keys, &new_keys, &PyDict_Type, &cache,
                          &PyDict_Type, &sizes, &cached, &limit)) {
        return NULL;
    }
    if (!PyAnySet_Check(new_keys)) {
        PyErr_SetString(PyExc_TypeError, "new_keys must be a set");
        return NULL;
    }
    int any_new = PySet_GET_SIZE(new_keys) > 0;
    Py_ssize_t pos = 0;
    PyObject *store_key, *state;
    while (PyDict_Next(keys, &pos, &store_key, &state)) {
        if (any_new) {
            int is_new = PySet_Contains(new_keys, store_key);
            if (is_new < 0) {
                return NULL;
            }
            if (is_new) {
                continue;
            }
        }
        /* sizes.pop(store_key, None), then put back last: the most recently used */
        PyObject *old = PyDict_GetItemWithError(sizes, store_key); /* borrowed */
        if (old == NULL && PyErr_Occurred()) {
            return NULL;
        }
        if (old != NULL) {
            Py_ssize_t size = PyLong_AsSsize_t(old);
            if (size == -1 && PyErr_Occurred()) {
                return NULL;
            }
            cached -= size;
            if (PyDict_DelItem(sizes, store_key) < 0 || PyDict_DelItem(cache, store_key) < 0) {
                return NULL;
            }
        }
        if (state != Py_None) {
            Py_ssize_t size = entries_held(state);
            if (size < 0) {
                return NULL;
            }
            size += 1;
            PyObject *held = PyLong_FromSsize_t(size);
            if (held == NULL) {
                return NULL;
            }
            int set = PyDict_SetItem(cache, store_key, state) < 0
                      || PyDict_SetItem(sizes, store_key, held) < 0;
            Py_DECREF(held);
            if (set) {
                return NULL;
            }
            cached += size;
        }
    }
    if (cached > limit) { /* the least recently used first */
        PyObject *evicted = PyList_New(0);
        if (evicted == NULL) {
            return NULL;
        }
        pos = 0;
        PyObject *held;
        while (cached > limit && PyDict_Next(sizes, &pos, &store_key, &held)) {
            Py_ssize_t size = PyLong_AsSsize_t(held);
            if ((size == -1 && PyErr_Occurred()) || PyList_Append(evicted, store_key) < 0) {
                Py_DECREF(evicted);
                return NULL;
            }
            cached -= size;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(evicted); i++) {
            PyObject *key = PyList_GET_ITEM(evicted, i);
            if (PyDict_DelItem(cache, key) < 0 || PyDict_DelItem(sizes, key) < 0) {
                Py_DECREF(evicted);
                return NULL;
            }
        }
        Py_DECREF(evicted);
    }
    return PyLong_FromSsize_t(cached);
}

/* PartitionState._defer's keys (see it there): each key written becomes dirty with its live
 * entries; returns the entries held by the keys that were not dirty before. */
static PyObject *
defer_keys(PyObject *self, PyObject *args)
{
    PyObject *written, *keys, *dirty;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyDict_Type, &written, &PyDict_Type, &keys,
                          &PyDict_Type, &dirty)) {
        return NULL;
    }
    Py_ssize_t held = 0;
    Py_ssize_t pos = 0;
    PyObject *store_key, *ignored;
    while (PyDict_Next(written, &pos, &store_key, &ignored)) {
        PyObject *state = PyDict_GetItemWithError(keys, store_key); /* borrowed */
        if (state == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, store_key);
            }
            return NULL;
        }
        int was_dirty = PyDict_Contains(dirty, store_key);
        if (was_dirty < 0) {
            return NULL;
        }
        if (!was_dirty && state != Py_None) {
            Py_ssize_t size = entries_held(state);
            if (size < 0) {
                return NULL;
            }
            held += size;
        }
        if (PyDict_SetItem(dirty, store_key, state) < 0) {
            return NULL;
        }
    }
    return PyLong_FromSsize_t(held);
}

#define MAX_TIME_MS 4611686018427387LL /* the largest |t| with t * 1000 below 2**62 */

/* RecordReader.read_columns of one group whose parts are all at hand (a key column of strings
 * or the record keys, the times in ms, each field's column at the top level), for a batch in
 * which no record is read alone: the same store keys, times in µs and rows of fields. None
 * when a record may be read alone (a value of another type, a time out of range, a key or a
 * text that may be too long): the Python loop reads that batch. */
static PyObject *
typed_group(PyObject *self, PyObject *args)
{
    PyObject *prefix, *key_column, *times, *fields, *numeric;
    int record_keys, record_time;
    Py_ssize_t max_text;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!pO!pO!O!n", &PyBytes_Type, &prefix, &PyList_Type,
                          &key_column, &record_keys, &PyList_Type, &times, &record_time,
                          &PyList_Type, &fields, &PyTuple_Type, &numeric, &max_text)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(key_column);
    Py_ssize_t nfields = PyList_GET_SIZE(fields);
    if (PyList_GET_SIZE(times) != count || PyTuple_GET_SIZE(numeric) != nfields) {
        PyErr_SetString(PyExc_ValueError, "the columns differ in length");
        return NULL;
    }
    int is_numeric[64];
    if (nfields > 64) {
        Py_RETURN_NONE;
    }
    for (Py_ssize_t f = 0; f < nfields; f++) {
        PyObject *column = PyList_GET_ITEM(fields, f);
        if (!PyList_CheckExact(column) || PyList_GET_SIZE(column) != count) {
            PyErr_SetString(PyExc_ValueError, "the columns differ in length");
            return NULL;
        }
        is_numeric[f] = PyObject_IsTrue(PyTuple_GET_ITEM(numeric, f));
        if (is_numeric[f] < 0) {
            return NULL;
        }
    }
    Py_ssize_t prefix_len = PyBytes_GET_SIZE(prefix);
    PyObject *store_keys = PyList_New(count);
    PyObject *times_us = PyList_New(count);
    PyObject *rows = PyList_New(count);
    if (store_keys == NULL || times_us == NULL || rows == NULL) {
        goto failed;
    }
    for (Py_ssize_t at = 0; at < count; at++) {
        PyObject *key = PyList_GET_ITEM(key_column, at);
        const char *data;
        Py_ssize_t size;
        if (record_keys) {
            if (!PyBytes_CheckExact(key)) {
                goto alone;
            }
            data = PyBytes_AS_STRING(key);
            size = PyBytes_GET_SIZE(key);
        }
        else {
            if (!PyUnicode_CheckExact(key)) {
                goto alone;
            }
            data = PyUnicode_AsUTF8AndSize(key, &size); /* str.encode(): its error too */
            if (data == NULL) {
                goto failed;
            }
        }
        if (max_text && size > max_text) {
            goto alone;
        }
        PyObject *store_key = PyBytes_FromStringAndSize(NULL, prefix_len + size);
        if (store_key == NULL) {
            goto failed;
        }
        memcpy(PyBytes_AS_STRING(store_key), PyBytes_AS_STRING(prefix), prefix_len);
        memcpy(PyBytes_AS_STRING(store_key) + prefix_len, data, size);
        PyList_SET_ITEM(store_keys, at, store_key);
        PyObject *time = PyList_GET_ITEM(times, at);
        if (!PyLong_CheckExact(time)) {
            goto alone;
        }
        int overflow;
        long long ms = PyLong_AsLongLongAndOverflow(time, &overflow);
        if (ms == -1 && PyErr_Occurred()) {
            goto failed;
        }
        if (overflow || ms > MAX_TIME_MS || ms < -MAX_TIME_MS || (record_time && ms < 0)) {
            goto alone;
        }
        PyObject *time_us = PyLong_FromLongLong(ms * 1000);
        if (time_us == NULL) {
            goto failed;
        }
        PyList_SET_ITEM(times_us, at, time_us);
        PyObject *row = nfields ? PyTuple_New(nfields) : empty_tuple;
        if (row == NULL) {
            goto failed;
        }
        if (!nfields) {
            Py_INCREF(row);
        }
        PyList_SET_ITEM(rows, at, row);
        for (Py_ssize_t f = 0; f < nfields; f++) {
            PyObject *value = PyList_GET_ITEM(PyList_GET_ITEM(fields, f), at);
            if (is_numeric[f]) {
                if (!PyFloat_CheckExact(value) || !isfinite(PyFloat_AS_DOUBLE(value))) {
                    goto alone;
                }
            }
            else if (!PyUnicode_CheckExact(value)
                     || (max_text && PyUnicode_GET_LENGTH(value) * 4 > max_text)) {
                goto alone;
            }
            Py_INCREF(value);
            PyTuple_SET_ITEM(row, f, value);
        }
        if (nfields) {
            PyObject_GC_UnTrack(row); /* floats and strings make no cycle: the collector skips it */
        }
    }
    return Py_BuildValue("(NNN)", store_keys, times_us, rows);
alone:
    Py_DECREF(store_keys);
    Py_DECREF(times_us);
    Py_DECREF(rows);
    Py_RETURN_NONE;
failed:
    Py_XDECREF(store_keys);
    Py_XDECREF(times_us);
    Py_XDECREF(rows);
    return NULL;
}

static PyMethodDef methods[] = {
    {"typed_group", typed_group, METH_VARARGS,
     "typed_group(prefix, key_column, record_keys, times_ms, record_time, fields, numeric, "
     "max_text) -> (store_keys, times_us, rows) | None: RecordReader.read_columns of a group."},
    {"cache_keys", cache_keys, METH_VARARGS,
     "cache_keys(keys, new_keys, cache, sizes, cached, limit) -> cached: PartitionState._cache_keys."},
    {"defer_keys", defer_keys, METH_VARARGS,
     "defer_keys(written, keys, dirty) -> entries: PartitionState._defer's keys."},
    {"window_sum", float_sum, METH_O,
     "window_sum(values: list) -> float: math.fsum(values) as the loop computes it (exact_sum "
     "where fsum overflows)."},
    {"bind", bind, METH_VARARGS,
     "bind(Served, KeyEntries, late, full, too_large, out_of_order, value, exact_sum, fsum, "
     "KeyEntries.first): "
     "the Python objects the loop makes and calls."},
    {"apply_group", apply_group, METH_VARARGS,
     "apply_group(plan, features, windows_us, horizon_us, ttl_us, max_entries, lateness_us, "
     "width, fields, store_keys, times_us, rows, bad, keys, cache, load, clock, written, block, "
     "rejected) -> (records applied, clock): PartitionState._apply_group's loop."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_engine",
    "The per-record loop of the window-state engine, compiled (see windows.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__engine(void)
{
    str_newest_us = PyUnicode_InternFromString("newest_us");
    str_times = PyUnicode_InternFromString("times");
    str_columns = PyUnicode_InternFromString("columns");
    str_ordered = PyUnicode_InternFromString("ordered");
    str_sums = PyUnicode_InternFromString("sums");
    empty_list = PyList_New(0);
    empty_tuple = PyTuple_New(0);
    if (!str_newest_us || !str_times || !str_columns || !str_ordered || !str_sums || !empty_list || !empty_tuple) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    /* apply_group's calling convention: 2 since it writes a batch's served values into one
     * block (windows.NATIVE_ABI); a build of another refuses to be used. */
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", 2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
