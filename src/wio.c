/* wio.c — see wio.h. */
#include "wio.h"

int mm_try_write(uv_stream_t *s, uv_buf_t *bufs, unsigned *n)
{
    int w = uv_try_write(s, bufs, *n);
    if (w == UV_EAGAIN) return 0;
    if (w < 0) return w;
    size_t left = (size_t)w;
    unsigned i = 0;
    while (i < *n && left >= bufs[i].len) left -= bufs[i++].len;
    if (i == *n) return 1;
    /* drop the buffers written whole, trim the one written in part */
    unsigned k = 0;
    for (unsigned j = i; j < *n; j++) bufs[k++] = bufs[j];
    bufs[0].base += left;
    bufs[0].len -= left;
    *n = k;
    return 0;
}
