/* safetensors: validated reading and plain writing.
 *
 * The header is untrusted input: vf_st_open() checks everything before any tensor
 * is used (8-byte length, header cap, UTF-8 JSON object, known dtypes, shapes whose
 * byte size does not overflow, data_offsets contiguous, non-overlapping, in bounds
 * and exactly covering the data buffer, no duplicate names, string-only
 * __metadata__). Each error names the file and, where there is one, the tensor.
 *
 * Files written by `vramfit quantize` carry "vramfit.format": "1" in their
 * __metadata__ and, per quantized tensor, "vramfit.dtype.<name>" (F8_E4M3, Q8
 * or Q4) and "vramfit.shape.<name>" ("[320, 4, 3, 3]"); the tensor itself is
 * U8 bytes. Opening such a file checks each entry (the tensor exists, is 1-D
 * U8, and its bytes are exactly the packed size of that format and shape) and
 * presents the tensor as packed (vf_st_tensor.packed). Files without
 * "vramfit.format" are read as they are.
 *
 * Tensor bytes are read with vf_st_read(): from a private read-only mapping when
 * the file could be mapped, with pread otherwise. A file truncated or replaced
 * while open must not kill the process with SIGBUS, so reads from the mapping
 * first re-check the file's size (and fall back to pread if it shrank, which then
 * reports a short read as VF_ERR_IO). A file whose modification time changed
 * since open (rewritten in place) is refused too, VF_ERR_IO on every read, so
 * that no model mixes old and new bytes; a file replaced by rename keeps
 * serving the bytes that were opened.
 */
#ifndef VF_IO_SAFETENSORS_H
#define VF_IO_SAFETENSORS_H

#include "core/tensor.h"
#include "vramfit.h"

#include <stddef.h>
#include <stdint.h>

#define VF_ST_HEADER_CAP (100u << 20) /* 100 MiB, as the reference implementation */

typedef struct vf_st_tensor {
    const char *name;
    vf_dtype dtype;
    int ndim;
    int64_t shape[VF_MAX_DIMS];
    uint64_t offset; /* from the start of the data buffer */
    uint64_t nbytes;
    /* 1: one of vramfit's packed quantized tensors (core/quant.h): stored as
     * U8 bytes, presented with its format as dtype (F8_E4M3, Q8 or Q4) and
     * its logical shape; nbytes stays the packed (stored) size. */
    int packed;
} vf_st_tensor;

typedef struct vf_st_file vf_st_file;

vf_status vf_st_open(const char *path, vf_st_file **out);
void vf_st_close(vf_st_file *f);

const char *vf_st_path(const vf_st_file *f);
size_t vf_st_count(const vf_st_file *f);
/* Tensors in file order (ascending offset). */
const vf_st_tensor *vf_st_at(const vf_st_file *f, size_t i);
/* NULL when absent (no error set). O(log n). */
const vf_st_tensor *vf_st_find(const vf_st_file *f, const char *name);
/* A __metadata__ value, or NULL. */
const char *vf_st_metadata(const vf_st_file *f, const char *key);
/* Total file size in bytes. */
uint64_t vf_st_file_size(const vf_st_file *f);

/* Copies n bytes of tensor t starting at byte off of the tensor into dst. */
vf_status vf_st_read(vf_st_file *f, const vf_st_tensor *t, uint64_t off, void *dst, uint64_t n);

/* Writing: tensors are written in the order given, data contiguous. */
typedef struct vf_st_write_tensor {
    const char *name;
    vf_dtype dtype;
    int ndim;
    int64_t shape[VF_MAX_DIMS];
    const void *data; /* numel * dtype size bytes */
} vf_st_write_tensor;

/* meta is NULL or a NULL-terminated list of key, value, key, value, ... */
vf_status vf_st_write(const char *path, const vf_st_write_tensor *ts, size_t n, const char *const *meta);

/* Streaming writing, for files larger than memory. open takes the tensor specs
 * (their data is ignored and may be NULL) and writes the header to "<path>.tmp";
 * write appends data bytes in file order, in pieces of any size; close checks
 * that exactly the declared bytes came, syncs and renames the file into place.
 * A failed write names the file and the tensor; after it (or instead of close)
 * abort removes the temporary. close and abort always free the writer. */
typedef struct vf_st_writer vf_st_writer;

vf_status vf_st_writer_open(const char *path, const vf_st_write_tensor *ts, size_t n,
                            const char *const *meta, vf_st_writer **out);
vf_status vf_st_writer_write(vf_st_writer *w, const void *bytes, size_t n);
/* Data bytes still expected. */
uint64_t vf_st_writer_remaining(const vf_st_writer *w);
vf_status vf_st_writer_close(vf_st_writer *w);
void vf_st_writer_abort(vf_st_writer *w);

/* Test hooks: on != 0 makes later vf_st_open() calls skip mmap and read with
 * pread only (the fallback path); vf_st_is_mapped() tells which path f uses. */
void vf_st_fault_no_mmap(int on);
int vf_st_is_mapped(const vf_st_file *f);

#endif
