/* Decode only the part of a JPEG that a crop needs, and scale it to the output size.
 *
 * Why this exists: the loader's cost per sample is mostly the JPEG decode, and a training
 * crop covers a quarter to four fifths of a stored image. libjpeg-turbo can skip the work
 * outside a box: jpeg_crop_scanline narrows the columns that get inverse DCT, upsampling
 * and colour conversion; jpeg_skip_scanlines skips that work for the rows above the box;
 * and decoding stops after the box's last row. When the box is at least twice the output
 * size each way, libjpeg scales by M/8 (M = 1, 2 or 4) in the DCT domain, with the smallest
 * M that still leaves at least `size` pixels each way. So the final bilinear step shrinks
 * one side by less than 2x, and the other by less than 8/3 for crops of at most 4:3. It
 * does not antialias; the loader's general path follows the same rule.
 *
 * The bilinear step samples as torch's interpolate(mode="bilinear", align_corners=False)
 * does, in 7-bit fixed point, writing HWC uint8 straight into the caller's buffer (a row
 * of the batch), optionally mirrored. It is separable: each needed source row is scaled
 * across once, and output rows blend two of those.
 *
 * Errors, and libjpeg's warnings about corrupt data, raise ValueError: a sample that does
 * not decode cleanly is skipped by the loader, never padded with grey. A file must end with
 * the end-of-image marker, so a cut-off one fails even when the box's rows are intact.
 * Known limit: damage inside the file past the box's last row is not seen, since those
 * rows are never decoded. The build decoded and checked every image in full when it
 * wrote the shard.
 *
 * Build: linked against the system libjpeg (libjpeg-turbo 1.5 or newer, for the crop and
 * skip calls). The extension is optional; without it the loader uses simplejpeg or Pillow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#ifndef LIBJPEG_TURBO_VERSION
#error "loaders._cropdecode needs libjpeg-turbo (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

/* Bilinear weights in 7 bits: a row scaled across fits uint16 (255 * 128), and the blend
 * of two such rows fits 32 bits, so both passes vectorise with plain SSE2 integer ops. */
#define WEIGHT_BITS 7
#define WEIGHT_ONE (1 << WEIGHT_BITS)
/* Refused before decoding, as in transforms.py: not an image our build wrote. */
#define MAX_PIXELS 64000000LL
#define CROP_MARGIN 2
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
#define LIBJPEG_TURBO_VERSION_STRING STRINGIFY(LIBJPEG_TURBO_VERSION)

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} error_manager;

static void on_error(j_common_ptr cinfo) {
    error_manager *err = (error_manager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    /* Level -1 is a warning: corrupt or truncated data that libjpeg would paper over. */
    if (level < 0) {
        on_error(cinfo);
    }
}

typedef struct {
    int left, top, right, bottom; /* the box, in the scaled image's pixels */
} box_t;

/* Per-call scratch, kept per thread so repeated calls reuse it. A pthread key's destructor
 * frees it with its thread (plain __thread storage would leak it), and a buffer grown past
 * SCRATCH_KEEP for one large image is freed after that call rather than kept. */
#define SCRATCH_KEEP ((size_t)16 << 20)

typedef struct {
    unsigned char *data;
    size_t size;
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *pointer) {
    scratch_t *scratch = pointer;
    free(scratch->data);
    free(scratch);
}

static void scratch_key_make(void) {
    pthread_key_create(&scratch_key, scratch_free);
}

static scratch_t *scratch_here(void) {
    pthread_once(&scratch_once, scratch_key_make);
    scratch_t *scratch = pthread_getspecific(scratch_key);
    if (scratch == NULL) {
        scratch = calloc(1, sizeof *scratch);
        if (scratch == NULL || pthread_setspecific(scratch_key, scratch) != 0) {
            free(scratch);
            return NULL;
        }
    }
    return scratch;
}

static unsigned char *scratch_of(size_t size) {
    scratch_t *scratch = scratch_here();
    if (scratch == NULL) {
        return NULL;
    }
    if (size > scratch->size) {
        unsigned char *grown = realloc(scratch->data, size);
        if (grown == NULL) {
            return NULL;
        }
        scratch->data = grown;
        scratch->size = size;
    }
    return scratch->data;
}

static void scratch_trim(void) {
    scratch_t *scratch = scratch_here();
    if (scratch != NULL && scratch->size > SCRATCH_KEEP) {
        free(scratch->data);
        scratch->data = NULL;
        scratch->size = 0;
    }
}

/* Source index and weight for each output position, as torch computes them. */
static void axis_taps(int in_size, int out_size, int *first, int *weight) {
    double step = (double)in_size / out_size;
    for (int i = 0; i < out_size; i++) {
        double at = (i + 0.5) * step - 0.5;
        if (at < 0) {
            at = 0;
        }
        int index = (int)at;
        if (index > in_size - 1) {
            index = in_size - 1;
        }
        first[i] = index;
        int w = (int)((at - index) * WEIGHT_ONE + 0.5);
        weight[i] = index < in_size - 1 ? w : 0;
    }
}

/* The resampler works in two passes through rows of int16 "RGBX" pixels (four lanes, the
 * fourth unused, so one pixel is one 64-bit SIMD lane group; the plain C set, used where
 * neither SIMD set is, packs RGB instead): a source row scaled across
 * holds a * (ONE - w) + b * w per channel, at most 255 * 128; two such rows blend into an
 * output row. Each pass has a plain C kernel, an SSSE3 and an AVX2 one, chosen once at
 * import by what the CPU supports.
 *
 * Per output pixel x the horizontal taps are the pixel at byte offset left[x] and the one
 * right after it. At the right edge the second tap is past the box, with weight 0: its
 * bytes are read, never used, and the scratch buffer has slack so the read stays inside.
 * Mirroring is done by the tables (offsets and weights reversed), not per pixel. */
typedef struct {
    int size;
    const int *left;         /* byte offset of each output pixel's left tap */
    const int16_t *weights;  /* per output pixel: ONE-w, w, ONE-w, w, ONE-w, w, 0, 0 */
} row_taps;

static void scale_row_rgbx_c(const unsigned char *row, const row_taps *taps, int16_t *out) {
    for (int x = 0; x < taps->size; x++) {
        const unsigned char *a = row + taps->left[x];
        int v = taps->weights[8 * x], w = taps->weights[8 * x + 1];
        out[4 * x] = (int16_t)(a[0] * v + a[3] * w);
        out[4 * x + 1] = (int16_t)(a[1] * v + a[4] * w);
        out[4 * x + 2] = (int16_t)(a[2] * v + a[5] * w);
        out[4 * x + 3] = 0;
    }
}

static void blend_rows_rgbx_c(const int16_t *upper, const int16_t *lower, int weight, int size,
                              unsigned char *out) {
    int keep = WEIGHT_ONE - weight, half = 1 << (2 * WEIGHT_BITS - 1);
    for (int x = 0; x < size; x++) {
        for (int c = 0; c < 3; c++) {
            int i = 4 * x + c;
            out[3 * x + c] = (unsigned char)((upper[i] * keep + lower[i] * weight + half) >>
                                             (2 * WEIGHT_BITS));
        }
    }
}

/* The plain C set packs rows as RGB (three lanes) instead, so that the blend is one
 * contiguous loop the compiler can vectorise on any CPU. */
static void scale_row_c(const unsigned char *row, const row_taps *taps, int16_t *out) {
    for (int x = 0; x < taps->size; x++) {
        const unsigned char *a = row + taps->left[x];
        int v = taps->weights[8 * x], w = taps->weights[8 * x + 1];
        out[3 * x] = (int16_t)(a[0] * v + a[3] * w);
        out[3 * x + 1] = (int16_t)(a[1] * v + a[4] * w);
        out[3 * x + 2] = (int16_t)(a[2] * v + a[5] * w);
    }
}

static void blend_rows_c(const int16_t *restrict upper, const int16_t *restrict lower,
                         int weight, int size, unsigned char *restrict out) {
    int keep = WEIGHT_ONE - weight, half = 1 << (2 * WEIGHT_BITS - 1);
    for (int i = 0; i < 3 * size; i++) {
        out[i] = (unsigned char)((upper[i] * keep + lower[i] * weight + half) >>
                                 (2 * WEIGHT_BITS));
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <tmmintrin.h>
#define HAVE_SSSE3_KERNELS 1

__attribute__((target("ssse3")))
static void scale_row_ssse3(const unsigned char *row, const row_taps *taps, int16_t *out) {
    /* a0 a1 a2 b0 b1 b2 -> 16-bit pairs (a0 b0) (a1 b1) (a2 b2) (0 0), for pmaddwd. */
    const __m128i pairs = _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1,
                                        -1, -1, -1, -1);
    const __m128i *weights = (const __m128i *)taps->weights;
    int x = 0;
    for (; x + 2 <= taps->size; x += 2) {
        __m128i p = _mm_loadl_epi64((const __m128i *)(row + taps->left[x]));
        __m128i q = _mm_loadl_epi64((const __m128i *)(row + taps->left[x + 1]));
        p = _mm_madd_epi16(_mm_shuffle_epi8(p, pairs), _mm_loadu_si128(weights + x));
        q = _mm_madd_epi16(_mm_shuffle_epi8(q, pairs), _mm_loadu_si128(weights + x + 1));
        _mm_storeu_si128((__m128i *)(out + 4 * x), _mm_packs_epi32(p, q));
    }
    if (x < taps->size) {
        row_taps last = {1, taps->left + x, taps->weights + 8 * x};
        scale_row_rgbx_c(row, &last, out + 4 * x);
    }
}

__attribute__((target("ssse3")))
static void blend_rows_ssse3(const int16_t *upper, const int16_t *lower, int weight, int size,
                             unsigned char *out) {
    const __m128i weights = _mm_set1_epi32((weight << 16) | (WEIGHT_ONE - weight));
    const __m128i half = _mm_set1_epi32(1 << (2 * WEIGHT_BITS - 1));
    /* RGBX RGBX RGBX RGBX -> RGBRGBRGBRGB */
    const __m128i drop_x = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14,
                                         -1, -1, -1, -1);
    int x = 0;
    for (; x + 4 <= size; x += 4) {
        __m128i u0 = _mm_loadu_si128((const __m128i *)(upper + 4 * x));
        __m128i u1 = _mm_loadu_si128((const __m128i *)(upper + 4 * x + 8));
        __m128i l0 = _mm_loadu_si128((const __m128i *)(lower + 4 * x));
        __m128i l1 = _mm_loadu_si128((const __m128i *)(lower + 4 * x + 8));
        __m128i a = _mm_madd_epi16(_mm_unpacklo_epi16(u0, l0), weights);
        __m128i b = _mm_madd_epi16(_mm_unpackhi_epi16(u0, l0), weights);
        __m128i c = _mm_madd_epi16(_mm_unpacklo_epi16(u1, l1), weights);
        __m128i d = _mm_madd_epi16(_mm_unpackhi_epi16(u1, l1), weights);
        a = _mm_srai_epi32(_mm_add_epi32(a, half), 2 * WEIGHT_BITS);
        b = _mm_srai_epi32(_mm_add_epi32(b, half), 2 * WEIGHT_BITS);
        c = _mm_srai_epi32(_mm_add_epi32(c, half), 2 * WEIGHT_BITS);
        d = _mm_srai_epi32(_mm_add_epi32(d, half), 2 * WEIGHT_BITS);
        __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, d));
        __m128i rgb = _mm_shuffle_epi8(bytes, drop_x);
        _mm_storel_epi64((__m128i *)(out + 3 * x), rgb);  /* 12 bytes, none past the row */
        int tail = _mm_cvtsi128_si32(_mm_srli_si128(rgb, 8));
        memcpy(out + 3 * x + 8, &tail, 4);
    }
    if (x < size) {
        blend_rows_rgbx_c(upper + 4 * x, lower + 4 * x, weight, size - x, out + 3 * x);
    }
}

#include <immintrin.h>

/* The same two kernels, four and eight pixels a step in 256-bit registers. */
__attribute__((target("avx2")))
static void scale_row_avx2(const unsigned char *row, const row_taps *taps, int16_t *out) {
    const __m256i pairs = _mm256_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1,
                                           -1, -1, 0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1,
                                           -1, -1, -1, -1);
    const __m256i *weights = (const __m256i *)taps->weights; /* two pixels per vector */
    const int *left = taps->left;
    int x = 0;
    for (; x + 4 <= taps->size; x += 4) {
        __m256i p = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)(row + left[x]))),
            _mm_loadl_epi64((const __m128i *)(row + left[x + 1])), 1);
        __m256i q = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)(row + left[x + 2]))),
            _mm_loadl_epi64((const __m128i *)(row + left[x + 3])), 1);
        p = _mm256_madd_epi16(_mm256_shuffle_epi8(p, pairs), _mm256_loadu_si256(weights + x / 2));
        q = _mm256_madd_epi16(_mm256_shuffle_epi8(q, pairs),
                              _mm256_loadu_si256(weights + x / 2 + 1));
        /* packs works per 128-bit lane: (x, x+2 | x+1, x+3); put them back in order. */
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(p, q), 0xD8);
        _mm256_storeu_si256((__m256i *)(out + 4 * x), packed);
    }
    if (x < taps->size) {
        row_taps rest = {taps->size - x, taps->left + x, taps->weights + 8 * x};
        scale_row_ssse3(row, &rest, out + 4 * x);
    }
}

__attribute__((target("avx2")))
static void blend_rows_avx2(const int16_t *upper, const int16_t *lower, int weight, int size,
                            unsigned char *out) {
    const __m256i weights = _mm256_set1_epi32((weight << 16) | (WEIGHT_ONE - weight));
    const __m256i half = _mm256_set1_epi32(1 << (2 * WEIGHT_BITS - 1));
    const __m256i drop_x = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1,
                                            -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1,
                                            -1, -1);
    int x = 0;
    for (; x + 8 <= size; x += 8) {
        __m256i u0 = _mm256_loadu_si256((const __m256i *)(upper + 4 * x));
        __m256i u1 = _mm256_loadu_si256((const __m256i *)(upper + 4 * x + 16));
        __m256i l0 = _mm256_loadu_si256((const __m256i *)(lower + 4 * x));
        __m256i l1 = _mm256_loadu_si256((const __m256i *)(lower + 4 * x + 16));
        /* Per lane: unpacklo holds pixel 0 (or 2), unpackhi pixel 1 (or 3). */
        __m256i a = _mm256_madd_epi16(_mm256_unpacklo_epi16(u0, l0), weights);
        __m256i b = _mm256_madd_epi16(_mm256_unpackhi_epi16(u0, l0), weights);
        __m256i c = _mm256_madd_epi16(_mm256_unpacklo_epi16(u1, l1), weights);
        __m256i d = _mm256_madd_epi16(_mm256_unpackhi_epi16(u1, l1), weights);
        a = _mm256_srai_epi32(_mm256_add_epi32(a, half), 2 * WEIGHT_BITS);
        b = _mm256_srai_epi32(_mm256_add_epi32(b, half), 2 * WEIGHT_BITS);
        c = _mm256_srai_epi32(_mm256_add_epi32(c, half), 2 * WEIGHT_BITS);
        d = _mm256_srai_epi32(_mm256_add_epi32(d, half), 2 * WEIGHT_BITS);
        /* (p0 p1 | p2 p3) and (p4 p5 | p6 p7) as int16, then bytes in 64-bit chunks
         * (p0p1 p4p5 | p2p3 p6p7), put back in order: p0..p3 | p4..p7. */
        __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        bytes = _mm256_permute4x64_epi64(bytes, 0xD8);
        __m256i rgb = _mm256_shuffle_epi8(bytes, drop_x); /* 12 bytes at the start of each lane */
        __m128i low = _mm256_castsi256_si128(rgb), high = _mm256_extracti128_si256(rgb, 1);
        _mm_storel_epi64((__m128i *)(out + 3 * x), low);
        int low_tail = _mm_cvtsi128_si32(_mm_srli_si128(low, 8));
        memcpy(out + 3 * x + 8, &low_tail, 4);
        _mm_storel_epi64((__m128i *)(out + 3 * x + 12), high);
        int high_tail = _mm_cvtsi128_si32(_mm_srli_si128(high, 8));
        memcpy(out + 3 * x + 20, &high_tail, 4);
    }
    if (x < size) {
        blend_rows_ssse3(upper + 4 * x, lower + 4 * x, weight, size - x, out + 3 * x);
    }
}
#endif

static void (*scale_row)(const unsigned char *, const row_taps *, int16_t *) = scale_row_c;
static const char *kernel_name = "c";
static void (*blend_rows)(const int16_t *, const int16_t *, int, int, unsigned char *) =
    blend_rows_c;

/* Scratch needed by resample for an output of `size`, in bytes (16-byte aligned parts). */
static size_t resample_scratch(int size) {
    return (size_t)size * (4 * sizeof(int) + 8 * sizeof(int16_t)) +
           (size_t)2 * 4 * size * sizeof(int16_t) + 64;
}

static void resample(const unsigned char *src, int src_width, int src_height, size_t stride,
                     int size, int flip, unsigned char *out, unsigned char *tables) {
    int16_t *weights = (int16_t *)tables;                 /* 8 per pixel, 16-byte aligned */
    int16_t *upper = weights + 8 * size, *lower = upper + 4 * size;
    int *left = (int *)(lower + 4 * size);
    int *xs = left + size, *ys = xs + size, *wy = ys + size;
    int *wx = ys; /* borrowed until ys is filled */
    axis_taps(src_width, size, xs, wx);
    for (int x = 0; x < size; x++) {
        int from = flip ? size - 1 - x : x;
        int16_t w = (int16_t)wx[from], v = (int16_t)(WEIGHT_ONE - wx[from]);
        int16_t *lane = weights + 8 * x;
        lane[0] = v; lane[1] = w; lane[2] = v; lane[3] = w; lane[4] = v; lane[5] = w;
        lane[6] = 0; lane[7] = 0;
        left[x] = 3 * xs[from];
    }
    axis_taps(src_height, size, ys, wy);
    row_taps taps = {size, left, weights};
    int upper_row = -1, lower_row = -1;
    for (int y = 0; y < size; y++) {
        int y0 = ys[y], y1 = y0 < src_height - 1 ? y0 + 1 : y0;
        if (upper_row != y0) {
            if (lower_row == y0) { /* one source row down: the lower row becomes the upper */
                int16_t *t = upper; upper = lower; lower = t;
                lower_row = -1;
            } else {
                scale_row(src + stride * y0, &taps, upper);
            }
            upper_row = y0;
        }
        if (lower_row != y1) {
            scale_row(src + stride * y1, &taps, lower);
            lower_row = y1;
        }
        blend_rows(upper, lower, wy[y], size, out + (size_t)3 * size * y);
    }
}

/* Smallest M of 1, 2, 4 and 8 whose M/8 scale leaves both box sides at least `size`
 * pixels. Only these: libjpeg-turbo has SIMD inverse DCTs for them, while its 7/8, 6/8...
 * kernels are plain C and slower than a full-size decode. */
static int dct_scale(int box_width, int box_height, int size) {
    for (int m = 1; m < 8; m *= 2) {
        if ((long)box_width * m >= (long)size * 8 && (long)box_height * m >= (long)size * 8) {
            return m;
        }
    }
    return 8;
}

typedef struct {
    const unsigned char *data;
    size_t length;
    int box[4];           /* left, top, right, bottom in the stored image; */
    int size;             /* 0: decode the whole image, no box, no scaling */
    int flip;
    unsigned char *out;   /* size*size*3, or NULL to return the whole image in scratch */
    int width, height;    /* out: the decoded image's size (whole-image mode) */
    unsigned char *pixels;
    int not_handled;      /* out: refused as a kind of file this decoder leaves to others */
} job_t;

/* libjpeg-turbo 2.1.5 crops columns wrongly when a scaled decode gives a component a
 * larger inverse DCT than the luma and that component still needs upsampling (luma sampled
 * 4x2 or 2x4 over 1x1 chroma, at 1/2 and 1/4): such images are decoded at full width. */
static int columns_crop_cleanly(const struct jpeg_decompress_struct *cinfo) {
    for (int i = 0; i < cinfo->num_components; i++) {
        const jpeg_component_info *c = &cinfo->comp_info[i];
        int upsampled = c->h_samp_factor * c->DCT_scaled_size !=
                            cinfo->max_h_samp_factor * cinfo->min_DCT_scaled_size ||
                        c->v_samp_factor * c->DCT_scaled_size !=
                            cinfo->max_v_samp_factor * cinfo->min_DCT_scaled_size;
        if (c->DCT_scaled_size != cinfo->min_DCT_scaled_size && upsampled) {
            return 0;
        }
    }
    return 1;
}

/* Returns NULL on success, else a message (static or in err->message). Runs without the GIL. */
static const char *run(job_t *job, error_manager *err) {
    /* Decoding stops after the box, so a cut-off file would not be noticed below it: ask
     * for the end-of-image marker up front. (A file with bytes after it goes to the
     * loader's general path, which decodes it whole.) */
    if (job->length < 4 || job->data[job->length - 2] != 0xFF ||
        job->data[job->length - 1] != 0xD9) {
        job->not_handled = 1;
        return "no end-of-image marker at the end (cut short, or data after it)";
    }
    struct jpeg_decompress_struct cinfo;
    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error;
    err->pub.emit_message = on_message;
    err->message[0] = 0;
    if (setjmp(err->jump)) {
        jpeg_destroy_decompress(&cinfo);
        return err->message;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (unsigned char *)job->data, (unsigned long)job->length);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        job->not_handled = 1;
        return "CMYK JPEG: not decoded here";
    }
    if ((long long)cinfo.image_width * cinfo.image_height > MAX_PIXELS) {
        jpeg_destroy_decompress(&cinfo);
        return "image exceeds the loader's pixel limit";
    }
    int left = 0, top = 0, right = (int)cinfo.image_width, bottom = (int)cinfo.image_height;
    int m = 8;
    if (job->size) {
        left = job->box[0]; top = job->box[1]; right = job->box[2]; bottom = job->box[3];
        if (left < 0 || top < 0 || right <= left || bottom <= top ||
            right > (int)cinfo.image_width || bottom > (int)cinfo.image_height) {
            jpeg_destroy_decompress(&cinfo);
            return "box is not inside the image";
        }
        m = dct_scale(right - left, bottom - top, job->size);
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = m;
    cinfo.scale_denom = 8;
    jpeg_start_decompress(&cinfo);
    box_t box = {left, top, right, bottom};
    if (m != 8) { /* the box in the scaled image, kept at least one pixel each way */
        int w = (int)cinfo.output_width, h = (int)cinfo.output_height;
        box.left = (int)((long)left * m / 8);
        box.top = (int)((long)top * m / 8);
        box.right = (int)(((long)right * m + 7) / 8);
        box.bottom = (int)(((long)bottom * m + 7) / 8);
        if (box.right > w) box.right = w;
        if (box.bottom > h) box.bottom = h;
        if (box.left >= box.right) box.left = box.right - 1;
        if (box.top >= box.bottom) box.top = box.bottom - 1;
    }
    /* Two columns of margin each side: chroma upsampling treats the cropped columns' edge
     * as the image's, so the box's own edge pixels need neighbours inside the crop to
     * come out as a full decode gives them. */
    int crop_left = box.left > CROP_MARGIN ? box.left - CROP_MARGIN : 0;
    int crop_right = box.right + CROP_MARGIN < (int)cinfo.output_width
                         ? box.right + CROP_MARGIN : (int)cinfo.output_width;
    JDIMENSION x_offset = (JDIMENSION)crop_left, crop_width = (JDIMENSION)(crop_right - crop_left);
    if (crop_width < cinfo.output_width && columns_crop_cleanly(&cinfo)) {
        jpeg_crop_scanline(&cinfo, &x_offset, &crop_width); /* widened to iMCU edges */
    } else {
        x_offset = 0; /* whole rows */
    }
    size_t stride = (size_t)cinfo.output_width * 3; /* output_width is now the crop's */
    int rows = box.bottom - box.top;
    size_t pixel_bytes = stride * rows;
    size_t extra = job->size ? resample_scratch(job->size) : 0;
    unsigned char *buffer = scratch_of(pixel_bytes + 16 + extra);
    if (buffer == NULL) {
        jpeg_destroy_decompress(&cinfo);
        return "out of memory";
    }
    if (box.top > 0) {
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)box.top);
    }
    while ((int)cinfo.output_scanline < box.bottom) {
        JSAMPROW row = buffer + stride * (cinfo.output_scanline - box.top);
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            jpeg_destroy_decompress(&cinfo);
            return "no more scanlines";  /* cannot happen with a memory source */
        }
    }
    int decoded_width = (int)cinfo.output_width;
    if (cinfo.output_scanline == cinfo.output_height) {
        /* The box reaches the bottom: read on to the end marker, where libjpeg reports
         * damage it could not see before (e.g. "extraneous bytes before marker"). */
        jpeg_finish_decompress(&cinfo);
    } else {
        jpeg_abort_decompress(&cinfo); /* the rows below the box are never decoded */
    }
    jpeg_destroy_decompress(&cinfo);
    if (!job->size) {
        job->width = decoded_width;
        job->height = rows;
        job->pixels = buffer;
        return NULL;
    }
    /* The resampler's tables and rows go after the pixels, aligned. */
    size_t tables_at = (pixel_bytes + 15) & ~(size_t)15;
    resample(buffer + 3 * (box.left - (int)x_offset), box.right - box.left, rows, stride,
             job->size, job->flip, job->out, buffer + tables_at);
    return NULL;
}

/* Raised for files this decoder leaves to the general path: CMYK, or a file that does not
 * end with its end-of-image marker. A subclass of ValueError; plain ValueError is damage. */
static PyObject *NotHandled = NULL;

static PyObject *raise_failure(const job_t *job, const char *failure) {
    PyErr_Format(job->not_handled ? NotHandled : PyExc_ValueError, "JPEG does not decode: %s",
                 failure);
    return NULL;
}

static PyObject *decode_crop(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *keywords[] = {"data", "box", "size", "out", "flip", NULL};
    Py_buffer data, out;
    PyObject *out_object;
    int left, top, right, bottom, size, flip = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*(iiii)iO|p", keywords, &data, &left,
                                     &top, &right, &bottom, &size, &out_object, &flip)) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "box and size must be within the C int range");
        }
        return NULL;
    }
    if (PyObject_GetBuffer(out_object, &out,
                           PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&data);
        if (PyErr_ExceptionMatches(PyExc_BufferError) ||
            PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "out must be a writable, contiguous uint8 buffer");
        }
        return NULL;
    }
    PyObject *result = NULL;
    if (size <= 0 || size > 8192) {
        PyErr_Format(PyExc_ValueError, "size %d is out of range", size);
    } else if (out.len != (Py_ssize_t)size * size * 3 || out.itemsize != 1) {
        PyErr_Format(PyExc_ValueError, "out must be a contiguous %d x %d x 3 uint8 buffer",
                     size, size);
    } else {
        job_t job = {data.buf, (size_t)data.len, {left, top, right, bottom}, size, flip,
                     out.buf, 0, 0, NULL, 0};
        error_manager err;
        const char *failure;
        Py_BEGIN_ALLOW_THREADS
        failure = run(&job, &err);
        scratch_trim();
        Py_END_ALLOW_THREADS
        if (failure) {
            raise_failure(&job, failure);
        } else {
            Py_INCREF(Py_None);
            result = Py_None;
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *decode_whole(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    job_t job = {data.buf, (size_t)data.len, {0, 0, 0, 0}, 0, 0, NULL, 0, 0, NULL, 0};
    error_manager err;
    const char *failure;
    Py_BEGIN_ALLOW_THREADS
    failure = run(&job, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (failure) {
        return raise_failure(&job, failure);
    }
    PyObject *pixels = PyByteArray_FromStringAndSize((const char *)job.pixels,
                                                     (Py_ssize_t)job.width * job.height * 3);
    scratch_trim();
    if (pixels == NULL) {
        return NULL;
    }
    return Py_BuildValue("(Nii)", pixels, job.height, job.width);
}

/* Which kernels run: the best the CPU has by default; tests switch to check that all of
 * them give the same bytes (they do the same integer arithmetic). */
static int select_kernels(const char *name) {
    if (strcmp(name, "c") == 0) {
        scale_row = scale_row_c;
        blend_rows = blend_rows_c;
#ifdef HAVE_SSSE3_KERNELS
    } else if (strcmp(name, "ssse3") == 0 && __builtin_cpu_supports("ssse3")) {
        scale_row = scale_row_ssse3;
        blend_rows = blend_rows_ssse3;
    } else if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2")) {
        scale_row = scale_row_avx2;
        blend_rows = blend_rows_avx2;
#endif
    } else {
        return -1;
    }
    kernel_name = name;
    return 0;
}

static PyObject *use_kernels(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    PyObject *previous = PyUnicode_FromString(kernel_name);
    if (previous != NULL && select_kernels(name) < 0) {
        Py_DECREF(previous);
        PyErr_Format(PyExc_ValueError, "kernels %R are not available on this CPU", arg);
        return NULL;
    }
    return previous;
}

static PyMethodDef methods[] = {
    {"_use_kernels", use_kernels, METH_O,
     "_use_kernels(name) -> previous name: 'c', 'ssse3' or 'avx2' (for tests)."},
    {"decode_crop", (PyCFunction)(void (*)(void))decode_crop, METH_VARARGS | METH_KEYWORDS,
     "decode_crop(data, box, size, out, flip=False)\n--\n\n"
     "Decode the (left, top, right, bottom) box of a JPEG and scale it bilinearly to\n"
     "size x size RGB, written into out (a contiguous size*size*3 uint8 buffer), mirrored\n"
     "left-right when flip is true. Raises ValueError when the JPEG does not decode cleanly."},
    {"decode_whole", decode_whole, METH_O,
     "decode_whole(data) -> (bytearray, height, width)\n--\n\n"
     "The whole JPEG as HWC RGB bytes; the same decoder, for tests and the benchmark's floor."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cropdecode",
    "Region-of-interest JPEG decode and bilinear resize (see _cropdecode.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cropdecode(void) {
#ifdef HAVE_SSSE3_KERNELS
    __builtin_cpu_init();
    if (select_kernels("avx2") < 0) {
        select_kernels("ssse3");
    }
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && NotHandled == NULL) {
        NotHandled = PyErr_NewExceptionWithDoc(
            "loaders._cropdecode.NotHandled",
            "A file this decoder leaves to the loader's general path (CMYK, no end marker).",
            PyExc_ValueError, NULL);
    }
    if (m != NULL && (NotHandled == NULL ||
                      PyModule_AddObjectRef(m, "NotHandled", NotHandled) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    if (m != NULL) {
        PyModule_AddIntConstant(m, "JPEG_LIB_VERSION", JPEG_LIB_VERSION);
        PyModule_AddStringConstant(m, "RESAMPLE_KERNELS", kernel_name);
        PyModule_AddStringConstant(m, "LIBJPEG_TURBO", LIBJPEG_TURBO_VERSION_STRING);
    }
    return m;
}
