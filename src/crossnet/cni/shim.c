/*
 * crossnet-cni native client: forwards a CNI call to a warm crossnet process
 * without starting a Python interpreter.
 *
 * scripts/install compiles this file once (crossnet.cni.install.build_prebuilt) into
 * <prefix>/libexec/crossnet/crossnet-cni; `crossnet cni install` copies that to
 * <bin-dir>/crossnet-cni (it compiles it only where no prebuilt client exists: a
 * development checkout). It does what crossnet.cni.client does
 * on its fast path and nothing else:
 *
 *   - CNI_COMMAND ADD/DEL/CHECK/STATUS/GC: send {"environ", "stdin", "netns", "target", "code"}
 *     to the running agent (<stateDir>/agent.sock, POST /v1/cni) or the warm helper
 *     (<stateDir>/cni.sock, crossnet.cni.server) and print its {"rc", "stdout"} reply;
 *   - VERSION: answered here, exactly like the shell wrapper crossnet-cni-py;
 *   - anything else, and every doubt (no helper, stale helper, `"server": false`,
 *     bytes >= 0x80 in stdin or a CNI_* variable, escapes in "stateDir", duplicate
 *     keys, malformed JSON or reply, ...): exec the Python client CN_FALLBACK with the
 *     same argv and environment, stdin restored from what was read (memfd).
 *
 * The client cannot compute crossnet's code_id() (mtimes of the Python files of the
 * installation), so it sends "code": "*": the helper compares its start-time code id
 * with the current one and answers "stale" (and steps down) if the files changed.
 * Correctness never depends on this file: the helper parses stdin itself.
 *
 * Build-time constants (all from crossnet.cni.install.shim_defines, never typed twice):
 *   CN_FALLBACK      path of the Python client (crossnet-cni-py); a relative one is taken
 *                    relative to this executable's directory (/proc/self/exe), so the client
 *                    built once at install time works wherever `crossnet cni install` copies it
 *   CN_VERSIONS      supported CNI versions, space separated (plugin.SUPPORTED_VERSIONS)
 *   CN_COMMANDS      commands served by helper/agent (client.SERVER_COMMANDS)
 *   CN_STATE_DIR     default "stateDir" (client.DEFAULT_STATE_DIR)
 *   CN_SOCKET        helper socket name (client.SOCKET_NAME)
 *   CN_AGENT_SOCKET  agent socket name (client.AGENT_SOCKET)
 *   CN_TIMEOUT       socket timeout in seconds (client.CLIENT_TIMEOUT)
 *   CN_MAX_REQUEST   largest request the helper accepts (server.MAX_REQUEST)
 *   CN_MAX_STDIN     largest network configuration the plugin accepts (client.MAX_STDIN)
 *
 * Plain C99 + Linux system calls; `cc -std=c99 -O2 -Wall -Wextra -Werror` clean.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(CN_FALLBACK) || !defined(CN_VERSIONS) || !defined(CN_COMMANDS) || !defined(CN_STATE_DIR) || \
    !defined(CN_SOCKET) || !defined(CN_AGENT_SOCKET) || !defined(CN_TIMEOUT) || !defined(CN_MAX_REQUEST) || \
    !defined(CN_MAX_STDIN)
#error "build with the -D options of crossnet.cni.install.shim_defines()"
#endif

#ifdef __GNUC__
#define NORETURN __attribute__((noreturn))
#else
#define NORETURN
#endif

#if CN_MAX_STDIN >= CN_MAX_REQUEST
#error "CN_MAX_STDIN must be below CN_MAX_REQUEST (an oversized stdin is cut after CN_MAX_REQUEST + 1 bytes)"
#endif

#define MAX_REPLY (64u << 20)
#define MAX_DEPTH 200

extern char **environ;

static char **g_argv;
static unsigned char *g_in;   /* stdin as read so far */
static size_t g_in_len;
static int g_in_read;         /* stdin was (partly) consumed: the fallback must get it back */
static int g_in_more;         /* stdin was longer than CN_MAX_REQUEST: the rest is still on fd 0 */

static void fallback(void) NORETURN;

/* ------------------------------------------------------------------ small helpers */

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *s, size_t n) {
    if (n > SIZE_MAX / 2 - b->len)
        fallback();
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            fallback();
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_chr(struct buf *b, char c) { buf_add(b, &c, 1); }

/* a JSON string literal of ASCII bytes s[0:n] */
static void buf_json(struct buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    buf_chr(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_add(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_add(b, e, 6);
        } else {
            buf_chr(b, (char)c);
        }
    }
    buf_chr(b, '"');
}

/* write all n bytes (sock: a socket, sent with MSG_NOSIGNAL so a closed peer is an error,
   not a SIGPIPE); 0 or -1 */
static int put_all(int fd, const void *data, size_t n, int sock) {
    const char *p = data;
    while (n) {
        ssize_t w = sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int copy_rest(int from, int to) {
    char chunk[65536];
    for (;;) {
        ssize_t r = read(from, chunk, sizeof chunk);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            return 0;
        if (put_all(to, chunk, (size_t)r, 0))
            return -1;
    }
}

static int all_ascii(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0x80)
            return 0;
    return 1;
}

/* is the token w[0:n] one of the space-separated words of list? */
static int in_list(const char *list, const char *w, size_t n) {
    const char *p = list;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *q = p;
        while (*q && *q != ' ')
            q++;
        if (q > p && (size_t)(q - p) == n && memcmp(p, w, n) == 0)
            return 1;
        p = q;
    }
    return 0;
}

static const char *last_version(size_t *n) {
    const char *list = CN_VERSIONS, *start = list, *p = list;
    *n = 0;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *q = p;
        while (*q && *q != ' ')
            q++;
        if (q > p) {
            start = p;
            *n = (size_t)(q - p);
        }
        p = q;
    }
    return start;
}

/* ------------------------------------------------------------------ fallback */

/* Put the bytes read from stdin (and whatever is still unread) back on fd 0. */
static int restore_stdin(void) {
    if (!g_in_read)
        return 0;
#ifdef SYS_memfd_create
    int fd = (int)syscall(SYS_memfd_create, "crossnet-cni-stdin", 1u /* MFD_CLOEXEC */);
    if (fd >= 0) {
        if (put_all(fd, g_in, g_in_len, 0) == 0) {
            if (g_in_more && copy_rest(0, fd))
                return -1; /* part of stdin is gone: no way back */
            if (lseek(fd, 0, SEEK_SET) == 0 && dup2(fd, 0) == 0) {
                close(fd);
                return 0;
            }
            if (g_in_more)
                return -1;
        }
        close(fd);
    }
#endif
    /* no memfd: a pipe fed by a child process */
    int p[2];
    if (pipe(p))
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[0]);
        if (put_all(p[1], g_in, g_in_len, 0) == 0 && g_in_more)
            copy_rest(0, p[1]);
        _exit(0);
    }
    close(p[1]);
    if (dup2(p[0], 0) != 0)
        return -1;
    close(p[0]);
    return 0;
}

static void fail(const char *what, int err) NORETURN;

/* the Python client: CN_FALLBACK, or a relative CN_FALLBACK next to this executable */
static const char *fallback_path(void) {
    static char path[PATH_MAX];
    if (CN_FALLBACK[0] == '/')
        return CN_FALLBACK;
    if (path[0])
        return path;
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        return CN_FALLBACK;
    path[n] = 0;
    char *slash = strrchr(path, '/');
    if (!slash || (size_t)(slash - path) + 1 + strlen(CN_FALLBACK) >= sizeof path) {
        path[0] = 0;
        return CN_FALLBACK;
    }
    strcpy(slash + 1, CN_FALLBACK);
    return path;
}

/* the plugin cannot even start: a CNI error (code 199, internal) on stdout */
static void fail(const char *what, int err) {
    size_t vn;
    const char *v = last_version(&vn);
    struct buf b = {0, 0, 0};
    char msg[512];
    snprintf(msg, sizeof msg, "crossnet-cni: %s %s: %s", what, fallback_path(), strerror(err));
    buf_str(&b, "{\"cniVersion\":");
    buf_json(&b, v, vn);
    buf_str(&b, ",\"code\":199,\"msg\":");
    buf_json(&b, msg, strlen(msg));
    buf_str(&b, ",\"details\":\"\"}\n");
    put_all(1, b.p, b.len, 0);
    fprintf(stderr, "%s\n", msg);
    exit(1);
}

static void fallback(void) {
    static int busy;
    if (busy) /* out of memory while reporting */
        exit(1);
    busy = 1;
    if (restore_stdin())
        fail("cannot pass stdin to", errno);
    const char *fb = fallback_path();
    char *fb_argv[2] = {(char *)fb, NULL};
    execv(fb, g_argv && g_argv[0] ? g_argv : fb_argv);
    fail("cannot run", errno);
}

/* ------------------------------------------------------------------ input */

/* read stdin (at most CN_MAX_REQUEST bytes, one more tells it is longer): 0 ok, -1 too long or error */
static int read_stdin(void) {
    size_t cap = 65536, max = (size_t)CN_MAX_REQUEST + 1;
    g_in = malloc(cap);
    if (!g_in)
        fallback();
    for (;;) {
        if (g_in_len == cap) {
            if (cap >= max) {
                g_in_more = 1;
                return -1;
            }
            cap = cap * 2 < max ? cap * 2 : max;
            unsigned char *p = realloc(g_in, cap);
            if (!p)
                fallback();
            g_in = p;
        }
        ssize_t r = read(0, g_in + g_in_len, cap - g_in_len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        g_in_read = 1;
        g_in_len += (size_t)r;
    }
    g_in_read = 1;
    if (g_in_len > (size_t)CN_MAX_REQUEST) {
        g_in_more = 1;
        return -1;
    }
    return 0;
}

struct var {
    const char *entry; /* "CNI_X=value" */
    size_t klen;       /* length of "CNI_X" */
};

static struct var *g_vars;
static size_t g_nvars;

/* the CNI_* variables (what client.request_bytes forwards); -1 when in doubt */
static int collect_env(void) {
    size_t n = 0;
    for (char **e = environ; *e; e++)
        n++;
    g_vars = calloc(n + 1, sizeof *g_vars);
    if (!g_vars)
        return -1;
    for (char **e = environ; *e; e++) {
        const char *s = *e, *eq;
        if (strncmp(s, "CNI_", 4) != 0 || !(eq = strchr(s, '=')))
            continue;
        if (!all_ascii((const unsigned char *)s, strlen(s)))
            return -1;
        size_t klen = (size_t)(eq - s);
        for (size_t i = 0; i < g_nvars; i++)
            if (g_vars[i].klen == klen && memcmp(g_vars[i].entry, s, klen) == 0)
                return -1; /* the same variable twice: which one would Python take? */
        g_vars[g_nvars].entry = s;
        g_vars[g_nvars].klen = klen;
        g_nvars++;
    }
    return 0;
}

static const char *env_value(const char *key) {
    size_t k = strlen(key);
    for (size_t i = 0; i < g_nvars; i++)
        if (g_vars[i].klen == k && memcmp(g_vars[i].entry, key, k) == 0)
            return g_vars[i].entry + k + 1;
    return NULL;
}

/* ------------------------------------------------------------------ JSON scanner */

/* Validates JSON (a subset of what Python's json module accepts: no NaN/Infinity, ASCII
 * only) and reports the members of the top-level object. */

struct js {
    const unsigned char *p, *e;
    int depth;
};

typedef int (*member_fn)(void *ctx, const unsigned char *key, size_t klen, int kesc, const unsigned char *val,
                         const unsigned char *vend);

static void js_ws(struct js *j) {
    while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int js_string(struct js *j, const unsigned char **s, size_t *n, int *esc) {
    if (j->p >= j->e || *j->p != '"')
        return -1;
    j->p++;
    *s = j->p;
    *esc = 0;
    while (j->p < j->e) {
        unsigned char c = *j->p;
        if (c == '"') {
            *n = (size_t)(j->p - *s);
            j->p++;
            return 0;
        }
        if (c < 0x20 || c >= 0x80)
            return -1;
        if (c == '\\') {
            *esc = 1;
            if (++j->p >= j->e)
                return -1;
            c = *j->p;
            if (c == 'u') {
                if (j->e - j->p < 5)
                    return -1;
                for (int i = 1; i <= 4; i++)
                    if (hexval(j->p[i]) < 0)
                        return -1;
                j->p += 5;
                continue;
            }
            if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' && c != 't')
                return -1;
        }
        j->p++;
    }
    return -1;
}

static int is_digit(const struct js *j) { return j->p < j->e && *j->p >= '0' && *j->p <= '9'; }

static int js_number(struct js *j) {
    if (j->p < j->e && *j->p == '-')
        j->p++;
    if (!is_digit(j))
        return -1;
    if (*j->p == '0')
        j->p++;
    else
        while (is_digit(j))
            j->p++;
    if (j->p < j->e && *j->p == '.') {
        j->p++;
        if (!is_digit(j))
            return -1;
        while (is_digit(j))
            j->p++;
    }
    if (j->p < j->e && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->e && (*j->p == '+' || *j->p == '-'))
            j->p++;
        if (!is_digit(j))
            return -1;
        while (is_digit(j))
            j->p++;
    }
    return 0;
}

static int js_literal(struct js *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->e - j->p) < n || memcmp(j->p, word, n) != 0)
        return -1;
    j->p += n;
    return 0;
}

static int js_value(struct js *j);

/* After an object member or array element: 1 = a ',' (another item follows), 0 = the
   container's closing character (consumed, depth restored), -1 = anything else. */
static int js_after_item(struct js *j, unsigned char close) {
    js_ws(j);
    if (j->p < j->e && *j->p == ',') {
        j->p++;
        return 1;
    }
    if (j->p < j->e && *j->p == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    return -1;
}

/* Consume an opening '{' or '[': 1 = the container is empty (closed again), 0 = items
   follow, -1 = nested too deep. */
static int js_open(struct js *j, unsigned char close) {
    if (++j->depth > MAX_DEPTH)
        return -1;
    j->p++;
    js_ws(j);
    if (j->p < j->e && *j->p == close) {
        j->p++;
        j->depth--;
        return 1;
    }
    return 0;
}

static int js_object(struct js *j, member_fn fn, void *ctx) {
    int r = js_open(j, '}');
    if (r)
        return r < 0 ? -1 : 0;
    do {
        const unsigned char *key, *val;
        size_t klen;
        int kesc;
        js_ws(j);
        if (js_string(j, &key, &klen, &kesc))
            return -1;
        js_ws(j);
        if (j->p >= j->e || *j->p != ':')
            return -1;
        j->p++;
        js_ws(j);
        val = j->p;
        if (js_value(j))
            return -1;
        if (fn && fn(ctx, key, klen, kesc, val, j->p))
            return -1;
    } while ((r = js_after_item(j, '}')) == 1);
    return r;
}

static int js_array(struct js *j) {
    int r = js_open(j, ']');
    if (r)
        return r < 0 ? -1 : 0;
    do {
        js_ws(j);
        if (js_value(j))
            return -1;
    } while ((r = js_after_item(j, ']')) == 1);
    return r;
}

static int js_value(struct js *j) {
    const unsigned char *s;
    size_t n;
    int esc;
    if (j->p >= j->e)
        return -1;
    switch (*j->p) {
    case '"':
        return js_string(j, &s, &n, &esc);
    case '{':
        return js_object(j, NULL, NULL);
    case '[':
        return js_array(j);
    case 't':
        return js_literal(j, "true");
    case 'f':
        return js_literal(j, "false");
    case 'n':
        return js_literal(j, "null");
    default:
        return js_number(j);
    }
}

/* a whole document that must be one object; fn sees its members */
static int js_document(const unsigned char *s, size_t n, member_fn fn, void *ctx) {
    struct js j = {s, s + n, 0};
    js_ws(&j);
    if (j.p >= j.e || *j.p != '{')
        return -1;
    if (js_object(&j, fn, ctx))
        return -1;
    js_ws(&j);
    return j.p == j.e ? 0 : -1;
}

static int key_is(const unsigned char *key, size_t klen, const char *name) {
    return klen == strlen(name) && memcmp(key, name, klen) == 0;
}

/* raw contents of a string value without escapes: 0, else -1 */
static int plain_string(const unsigned char *val, const unsigned char *vend, const unsigned char **s, size_t *n) {
    if (vend - val < 2 || *val != '"' || memchr(val + 1, '\\', (size_t)(vend - val - 2)))
        return -1;
    *s = val + 1;
    *n = (size_t)(vend - val - 2);
    return 0;
}

/* ------------------------------------------------------------------ network config */

struct conf {
    int n_state, n_server, server_false, state_ok;
    const unsigned char *state;
    size_t state_len;
};

static int conf_member(void *ctx, const unsigned char *key, size_t klen, int kesc, const unsigned char *val,
                       const unsigned char *vend) {
    struct conf *c = ctx;
    if (kesc)
        return -1; /* an escaped key could spell "stateDir" */
    if (key_is(key, klen, "stateDir")) {
        c->n_state++;
        c->state_ok = plain_string(val, vend, &c->state, &c->state_len) == 0 && c->state_len > 0;
    } else if (key_is(key, klen, "server")) {
        c->n_server++;
        c->server_false = vend - val == 5 && memcmp(val, "false", 5) == 0;
    }
    return 0;
}

/* os.path.join(dir, name) */
static char *path_join(const char *dir, size_t dlen, const char *name) {
    size_t nlen = strlen(name);
    char *p = malloc(dlen + nlen + 2);
    if (!p)
        fallback();
    memcpy(p, dir, dlen);
    size_t k = dlen;
    if (k && p[k - 1] != '/')
        p[k++] = '/';
    memcpy(p + k, name, nlen + 1);
    return p;
}

/* ------------------------------------------------------------------ socket round trip */

/* the process listening on the connected socket runs as this process's user (client.peer_is_us:
 * a socket another user made in a writable stateDir is never handed the call) */
static int peer_is_us(int fd) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && len == sizeof cred && cred.uid == geteuid();
}

/* connect to the unix socket at path, check its listener (peer_is_us), send head + body,
 * shut down writing, read until the peer closes: 0 and *out, or -1 (nobody there, refused,
 * another user's, timeout, ...) */
static int exchange(const char *path, const char *head, size_t hn, const char *body, size_t bn, struct buf *out) {
    struct sockaddr_un sa;
    size_t pl = strlen(path);
    if (pl == 0 || pl > sizeof sa.sun_path)
        return -1;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, pl);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {CN_TIMEOUT, 0};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) ||
        connect(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + pl)) ||
        !peer_is_us(fd) || put_all(fd, head, hn, 1) || put_all(fd, body, bn, 1) || shutdown(fd, SHUT_WR)) {
        close(fd);
        return -1;
    }
    out->len = 0;
    for (;;) {
        char chunk[65536];
        ssize_t r = recv(fd, chunk, sizeof chunk, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            close(fd);
            return -1;
        }
        if (r == 0)
            break;
        if (out->len + (size_t)r > MAX_REPLY) {
            close(fd);
            return -1;
        }
        buf_add(out, chunk, (size_t)r);
    }
    close(fd);
    return 0;
}

/* the agent's answer to POST /v1/cni: payload only on status 200 (client._via_agent) */
static int via_agent(const char *state, size_t slen, const struct buf *body, const char **payload, size_t *plen,
                     struct buf *raw) {
    char *path = path_join(state, slen, CN_AGENT_SOCKET);
    struct stat st;
    int rc = -1;
    if (stat(path, &st) == 0) {
        char head[256];
        int hn = snprintf(head, sizeof head,
                          "POST /v1/cni HTTP/1.0\r\nHost: agent\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n",
                          body->len);
        if (hn > 0 && (size_t)hn < sizeof head && exchange(path, head, (size_t)hn, body->p, body->len, raw) == 0 &&
            raw->len) {
            const char *end = memmem(raw->p, raw->len, "\r\n\r\n", 4);
            if (end) {
                /* header.split(b" ", 2)[1] == b"200" */
                const char *sp1 = memchr(raw->p, ' ', (size_t)(end - raw->p));
                if (sp1) {
                    const char *tok = sp1 + 1;
                    const char *sp2 = memchr(tok, ' ', (size_t)(end - tok));
                    const char *tend = sp2 ? sp2 : end;
                    if (tend - tok == 3 && memcmp(tok, "200", 3) == 0) {
                        *payload = end + 4;
                        *plen = raw->len - (size_t)(end + 4 - raw->p);
                        rc = 0;
                    }
                }
            }
        }
    }
    free(path);
    return rc;
}

/* ------------------------------------------------------------------ reply */

struct reply {
    int n_rc, n_out, n_stale, rc_ok, out_str;
    long long rc;
    const unsigned char *out;
    size_t out_len;
};

static int reply_member(void *ctx, const unsigned char *key, size_t klen, int kesc, const unsigned char *val,
                        const unsigned char *vend) {
    struct reply *r = ctx;
    if (kesc)
        return -1;
    if (key_is(key, klen, "stale")) {
        r->n_stale++;
    } else if (key_is(key, klen, "rc")) {
        /* an int: -?digits, no fraction or exponent (1.0 is a float in Python) */
        const unsigned char *p = val;
        int neg = 0;
        long long v = 0;
        r->n_rc++;
        r->rc_ok = 0;
        if (p < vend && *p == '-') {
            neg = 1;
            p++;
        }
        if (p == vend)
            return 0;
        for (; p < vend; p++) {
            if (*p < '0' || *p > '9')
                return 0;
            if (v > (INT_MAX - (*p - '0')) / 10)
                return 0;
            v = v * 10 + (*p - '0');
        }
        r->rc = neg ? -v : v;
        r->rc_ok = 1;
    } else if (key_is(key, klen, "stdout")) {
        r->n_out++;
        r->out_str = *val == '"';
        if (r->out_str) {
            r->out = val + 1;
            r->out_len = (size_t)(vend - val - 2);
        }
    }
    return 0;
}

static void put_utf8(struct buf *o, unsigned long cp) {
    char u[4];
    if (cp < 0x80) {
        u[0] = (char)cp;
        buf_add(o, u, 1);
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        buf_add(o, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        buf_add(o, u, 3);
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        buf_add(o, u, 4);
    }
}

static unsigned long hex4(const unsigned char *p) {
    return (unsigned long)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

/* the contents of a validated JSON string literal, as UTF-8: 0, or -1 (lone surrogate) */
static int js_unescape(const unsigned char *s, size_t n, struct buf *o) {
    size_t i = 0;
    while (i < n) {
        size_t k = i;
        while (k < n && s[k] != '\\')
            k++;
        if (k > i)
            buf_add(o, s + i, k - i);
        if (k >= n)
            break;
        unsigned char c = s[k + 1];
        i = k + 2;
        switch (c) {
        case 'b': buf_chr(o, '\b'); break;
        case 'f': buf_chr(o, '\f'); break;
        case 'n': buf_chr(o, '\n'); break;
        case 'r': buf_chr(o, '\r'); break;
        case 't': buf_chr(o, '\t'); break;
        case 'u': {
            unsigned long cp = hex4(s + i);
            i += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return -1;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (n - i < 6 || s[i] != '\\' || s[i + 1] != 'u')
                    return -1;
                unsigned long lo = hex4(s + i + 2);
                if (lo < 0xdc00 || lo > 0xdfff)
                    return -1;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                i += 6;
            }
            put_utf8(o, cp);
            break;
        }
        default: buf_chr(o, (char)c); /* " \ / */
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ commands */

/* VERSION, byte for byte what the shell wrapper prints:
 *   v=$(tr -d ' \t\r\n' | sed -n 's/.*"cniVersion":"\([0-9.]*\)".*\1/p'); unsupported -> newest */
static void version(void) {
    static const char pat[] = "\"cniVersion\":\"";
    const size_t pn = sizeof pat - 1;
    if (read_stdin() || memchr(g_in, 0, g_in_len) || !all_ascii(g_in, g_in_len))
        fallback(); /* sed and locales: let the shell decide */
    char *s = malloc(g_in_len + 1);
    if (!s)
        fallback();
    size_t n = 0;
    for (size_t i = 0; i < g_in_len; i++)
        if (g_in[i] != ' ' && g_in[i] != '\t' && g_in[i] != '\r' && g_in[i] != '\n')
            s[n++] = (char)g_in[i];
    const char *v = NULL;
    size_t vn = 0;
    for (size_t p = n >= pn ? n - pn + 1 : 0; p-- > 0;) { /* the last match (greedy .*) */
        if (memcmp(s + p, pat, pn) != 0)
            continue;
        size_t q = p + pn;
        while (q < n && ((s[q] >= '0' && s[q] <= '9') || s[q] == '.'))
            q++;
        if (q < n && s[q] == '"') {
            v = s + p + pn;
            vn = q - (p + pn);
            break;
        }
    }
    if (!v || !in_list(CN_VERSIONS, v, vn))
        v = last_version(&vn);
    struct buf b = {0, 0, 0};
    buf_str(&b, "{\"cniVersion\":\"");
    buf_add(&b, v, vn);
    buf_str(&b, "\",\"supportedVersions\":[");
    const char *p = CN_VERSIONS;
    int first = 1;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *q = p;
        while (*q && *q != ' ')
            q++;
        if (q > p) {
            if (!first)
                buf_chr(&b, ',');
            first = 0;
            buf_json(&b, p, (size_t)(q - p));
        }
        p = q;
    }
    buf_str(&b, "]}\n");
    if (put_all(1, b.p, b.len, 0))
        exit(1);
    exit(0);
}

/* ADD/DEL/CHECK/STATUS/GC through the agent or the warm helper (client.call) */
static void forward(void) {
    if (read_stdin()) {
        /* longer than CN_MAX_REQUEST: the Python client reads at most CN_MAX_STDIN + 1 bytes
           and refuses the call (code 6), so the first CN_MAX_REQUEST + 1 bytes are all it
           needs; the rest stays unread instead of being copied into memory */
        g_in_more = 0;
        fallback();
    }
    if (!all_ascii(g_in, g_in_len))
        fallback();

    /* client.server_target */
    struct conf c = {0, 0, 0, 0, NULL, 0};
    if (js_document(g_in, g_in_len, conf_member, &c) || c.n_state > 1 || c.n_server > 1 || c.server_false)
        fallback();
    const char *state = CN_STATE_DIR;
    size_t slen = strlen(state);
    if (c.n_state) {
        if (!c.state_ok)
            fallback();
        state = (const char *)c.state;
        slen = c.state_len;
    }
    struct stat st;
    char *applied = path_join(state, slen, "applied.json");
    if (stat(applied, &st) != 0)
        fallback();
    free(applied);

    /* client.request_bytes, with "code": "*" */
    struct stat ns;
    if (stat("/proc/self/ns/net", &ns) != 0)
        fallback();
    struct buf body = {0, 0, 0};
    buf_str(&body, "{\"environ\":{");
    for (size_t i = 0; i < g_nvars; i++) {
        const char *e = g_vars[i].entry;
        if (i)
            buf_chr(&body, ',');
        buf_json(&body, e, g_vars[i].klen);
        buf_chr(&body, ':');
        buf_json(&body, e + g_vars[i].klen + 1, strlen(e + g_vars[i].klen + 1));
    }
    buf_str(&body, "},\"stdin\":");
    buf_json(&body, (const char *)g_in, g_in_len);
    /* client.target_id: CNI_NETNS as this process resolves it; the helper serves the call
     * only if it resolves to the same namespace there (PID/mount namespaces may differ) */
    char target[64] = "null";
    const char *nsv = env_value("CNI_NETNS");
    if (nsv && *nsv) {
        char *tp = strchr(nsv, '/') ? strdup(nsv) : path_join("/run/netns", 10, nsv);
        struct stat ts;
        if (!tp)
            fallback();
        if (stat(tp, &ts) == 0)
            snprintf(target, sizeof target, "[%llu,%llu]", (unsigned long long)ts.st_dev,
                     (unsigned long long)ts.st_ino);
        free(tp);
    }
    char tail[192];
    snprintf(tail, sizeof tail, ",\"netns\":[%llu,%llu],\"target\":%s,\"code\":\"*\"}",
             (unsigned long long)ns.st_dev, (unsigned long long)ns.st_ino, target);
    buf_str(&body, tail);
    if (body.len > (size_t)CN_MAX_REQUEST)
        fallback(); /* the helper would refuse it */

    /* client.call: the agent first, else the helper */
    struct buf raw = {0, 0, 0};
    const char *payload;
    size_t plen;
    if (via_agent(state, slen, &body, &payload, &plen, &raw)) {
        char *sock = path_join(state, slen, CN_SOCKET);
        if (exchange(sock, "", 0, body.p, body.len, &raw))
            fallback();
        free(sock);
        payload = raw.p;
        plen = raw.len;
    }
    if (!plen || !all_ascii((const unsigned char *)payload, plen))
        fallback();
    struct reply r;
    memset(&r, 0, sizeof r);
    if (js_document((const unsigned char *)payload, plen, reply_member, &r) || r.n_stale || r.n_rc != 1 ||
        !r.rc_ok || r.n_out > 1)
        fallback();
    struct buf out = {0, 0, 0};
    if (r.out_str && js_unescape(r.out, r.out_len, &out))
        fallback();
    if (out.len) {
        buf_chr(&out, '\n');
        if (put_all(1, out.p, out.len, 0))
            exit(1);
    }
    exit((int)r.rc);
}

int main(int argc, char **argv) {
    (void)argc;
    g_argv = argv;
    if (collect_env())
        fallback();
    const char *cmd = env_value("CNI_COMMAND");
    if (!cmd)
        fallback();
    if (strcmp(cmd, "VERSION") == 0) {
        if (isatty(0))
            fallback(); /* the shell reads the terminal, like before */
        version();
    }
    if (*cmd && in_list(CN_COMMANDS, cmd, strlen(cmd)))
        forward();
    fallback();
}
