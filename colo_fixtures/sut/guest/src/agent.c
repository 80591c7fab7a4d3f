/*
 * colo-agent: the guest side of the COLO test harness.
 *
 * A line-oriented TCP key-value service whose writes are durable on a raw block
 * device (one 512-byte record per PUT, fdatasync before the reply), plus a
 * memory-integrity checker and a once-per-second heartbeat on the console.
 *
 * Protocol (one request line, one reply line):
 *   PING              -> PONG <uptime_ms>
 *   CLOCK             -> CLOCK <monotonic ns> (differs between two replicas' replies)
 *   PUT <key> <value> -> OK <seq> | ERR <reason>
 *   GET <key>         -> VAL <seq> <value> | NONE
 *   MEM               -> MEM rounds=<n> errors=<m> bytes=<size>
 *   STAT              -> STAT keys=<n> seq=<s> uptime_ms=<ms> memrounds=<n> memerrors=<m>
 *   anything else     -> ERR bad-request
 *
 * Disk record (little-endian) at byte offset seq*512, seq >= 1:
 *   char magic[8] = "COLOKV01"; u64 seq; u32 klen; u32 vlen;
 *   char key[64]; char value[256]; u32 crc32 (zlib CRC-32 of the 344 bytes before it)
 *
 * Usage: colo-agent --port P --disk DEV --membuf-mib N
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 512
#define KEY_MAX 63
#define VAL_MAX 255
#define KEY_FIELD 64
#define VAL_FIELD 256
#define CRC_OFFSET 344 /* 8 + 8 + 4 + 4 + 64 + 256 */
#define LINE_MAX_LEN 1024
#define NBUCKETS 4096
#define MEMCHECK_PAUSE_NS (20 * 1000 * 1000)

static const char MAGIC[8] = {'C', 'O', 'L', 'O', 'K', 'V', '0', '1'};

/* ---- console output ---------------------------------------------------- */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One write() per line so concurrent lines never interleave mid-line. */
static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(STDOUT_FILENO, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += w;
    }
}

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t uptime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- CRC-32 (zlib polynomial, reflected) ------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_buf(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ---- little-endian helpers ---------------------------------------------- */

static void put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- the in-memory store ------------------------------------------------ */

struct entry {
    struct entry *next;
    uint64_t seq;
    char key[KEY_FIELD];
    char value[VAL_FIELD];
};

static struct entry *buckets[NBUCKETS];
static uint64_t nkeys;    /* guarded by store_lock */
static uint64_t last_seq; /* guarded by store_lock */
static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;

static int disk_fd = -1;
static uint64_t disk_size;

static unsigned bucket_of(const char *key)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *key; key++)
        h = (h ^ (unsigned char)*key) * 16777619u;
    return h % NBUCKETS;
}

static struct entry *store_find(const char *key)
{
    for (struct entry *e = buckets[bucket_of(key)]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static int store_set(const char *key, const char *value, uint64_t seq)
{
    struct entry *e = store_find(key);
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e)
            return -1;
        snprintf(e->key, sizeof e->key, "%s", key);
        unsigned b = bucket_of(key);
        e->next = buckets[b];
        buckets[b] = e;
        nkeys++;
    }
    snprintf(e->value, sizeof e->value, "%s", value);
    e->seq = seq;
    return 0;
}

/* ---- disk records ------------------------------------------------------- */

static void encode_record(unsigned char *sec, uint64_t seq, const char *key, const char *value)
{
    size_t klen = strlen(key), vlen = strlen(value);
    memset(sec, 0, SECTOR);
    memcpy(sec, MAGIC, sizeof MAGIC);
    put_le(sec + 8, seq, 8);
    put_le(sec + 16, klen, 4);
    put_le(sec + 20, vlen, 4);
    memcpy(sec + 24, key, klen);
    memcpy(sec + 24 + KEY_FIELD, value, vlen);
    put_le(sec + CRC_OFFSET, crc32_buf(sec, CRC_OFFSET), 4);
}

/* Fill key/value from a sector; 0 if it is a valid record with sequence number `seq`. */
static int decode_record(const unsigned char *sec, uint64_t seq, char *key, char *value)
{
    if (memcmp(sec, MAGIC, sizeof MAGIC) != 0 || get_le(sec + 8, 8) != seq)
        return -1;
    uint64_t klen = get_le(sec + 16, 4), vlen = get_le(sec + 20, 4);
    if (klen < 1 || klen > KEY_MAX || vlen < 1 || vlen > VAL_MAX)
        return -1;
    if (get_le(sec + CRC_OFFSET, 4) != crc32_buf(sec, CRC_OFFSET))
        return -1;
    memcpy(key, sec + 24, klen);
    key[klen] = 0;
    memcpy(value, sec + 24 + KEY_FIELD, vlen);
    value[vlen] = 0;
    return 0;
}

static int open_disk(const char *path)
{
    disk_fd = open(path, O_RDWR | O_CLOEXEC);
    if (disk_fd < 0)
        return -1;
    struct stat st;
    if (fstat(disk_fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        if (ioctl(disk_fd, BLKGETSIZE64, &disk_size) != 0)
            return -1;
    } else {
        off_t end = lseek(disk_fd, 0, SEEK_END);
        if (end < 0)
            return -1;
        disk_size = (uint64_t)end;
    }
    return 0;
}

/* Rebuild the store from records 1, 2, ... up to the first invalid sector. */
static uint64_t replay(void)
{
    unsigned char sec[SECTOR];
    char key[KEY_FIELD], value[VAL_FIELD];
    uint64_t seq = 1;
    for (; (seq + 1) * SECTOR <= disk_size; seq++) {
        if (pread(disk_fd, sec, SECTOR, (off_t)(seq * SECTOR)) != SECTOR)
            break;
        if (decode_record(sec, seq, key, value) != 0)
            break;
        if (store_set(key, value, seq) != 0)
            break;
    }
    last_seq = seq - 1;
    return last_seq;
}

/* Durably append one record; writes `OK <seq>` or `ERR <reason>` into out. */
static void do_put(const char *key, const char *value, char *out, size_t outsz)
{
    unsigned char sec[SECTOR];
    pthread_mutex_lock(&store_lock);
    uint64_t seq = last_seq + 1;
    if ((seq + 1) * SECTOR > disk_size) {
        snprintf(out, outsz, "ERR full");
    } else {
        encode_record(sec, seq, key, value);
        ssize_t w = pwrite(disk_fd, sec, SECTOR, (off_t)(seq * SECTOR));
        if (w != SECTOR) {
            snprintf(out, outsz, "ERR io-write:%s", w < 0 ? strerrorname_np(errno) : "short");
        } else if (fdatasync(disk_fd) != 0) {
            snprintf(out, outsz, "ERR io-sync:%s", strerrorname_np(errno));
        } else if (store_set(key, value, seq) != 0) {
            snprintf(out, outsz, "ERR no-memory");
        } else {
            last_seq = seq;
            snprintf(out, outsz, "OK %llu", (unsigned long long)seq);
        }
    }
    pthread_mutex_unlock(&store_lock);
}

static void do_get(const char *key, char *out, size_t outsz)
{
    pthread_mutex_lock(&store_lock);
    struct entry *e = store_find(key);
    if (e)
        snprintf(out, outsz, "VAL %llu %s", (unsigned long long)e->seq, e->value);
    else
        snprintf(out, outsz, "NONE");
    pthread_mutex_unlock(&store_lock);
}

/* ---- memory-integrity checker ------------------------------------------- */

static uint64_t mem_rounds;  /* atomic */
static uint64_t mem_errors;  /* atomic */
static size_t membuf_bytes;
static volatile uint64_t *membuf;

static uint64_t mix(uint64_t r, uint64_t i)
{
    uint64_t z = ((r << 32) ^ i) + 0x9E3779B97F4A7C15ull; /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void *memcheck_thread(void *arg)
{
    (void)arg;
    size_t words = membuf_bytes / sizeof(uint64_t);
    const struct timespec pause = {0, MEMCHECK_PAUSE_NS};
    for (uint64_t r = 1;; r++) {
        for (size_t i = 0; i < words; i++)
            membuf[i] = mix(r, i);
        uint64_t bad = 0;
        for (size_t i = 0; i < words; i++) {
            uint64_t want = mix(r, i), got = membuf[i];
            if (got == want)
                continue;
            if (bad++ == 0)
                say("colo-agent: MEMCHECK FAIL round=%llu index=%zu expected=%016llx got=%016llx",
                    (unsigned long long)r, i, (unsigned long long)want,
                    (unsigned long long)got);
        }
        __atomic_add_fetch(&mem_errors, bad, __ATOMIC_RELAXED);
        __atomic_store_n(&mem_rounds, r, __ATOMIC_RELAXED);
        nanosleep(&pause, NULL);
    }
    return NULL;
}

/* ---- request handling --------------------------------------------------- */

static int valid_key(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > KEY_MAX)
        return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

static int valid_value(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > VAL_MAX)
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7E)
            return 0;
    return 1;
}

/* Split on single spaces; returns the token count, or -1 on empty tokens or too many. */
static int split(char *line, char **tok, int max)
{
    int n = 0;
    char *p = line;
    for (;;) {
        if (n == max)
            return -1;
        tok[n++] = p;
        char *sp = strchr(p, ' ');
        if (!sp)
            break;
        *sp = 0;
        p = sp + 1;
    }
    for (int i = 0; i < n; i++)
        if (!*tok[i])
            return -1;
    return n;
}

static void handle(char *line, char *out, size_t outsz)
{
    char *tok[4];
    int n = split(line, tok, 4);
    uint64_t rounds = __atomic_load_n(&mem_rounds, __ATOMIC_RELAXED);
    uint64_t errors = __atomic_load_n(&mem_errors, __ATOMIC_RELAXED);
    if (n == 1 && strcmp(tok[0], "PING") == 0) {
        snprintf(out, outsz, "PONG %llu", (unsigned long long)uptime_ms());
    } else if (n == 1 && strcmp(tok[0], "CLOCK") == 0) {
        snprintf(out, outsz, "CLOCK %llu", (unsigned long long)monotonic_ns());
    } else if (n == 3 && strcmp(tok[0], "PUT") == 0 && valid_key(tok[1]) && valid_value(tok[2])) {
        do_put(tok[1], tok[2], out, outsz);
    } else if (n == 2 && strcmp(tok[0], "GET") == 0 && valid_key(tok[1])) {
        do_get(tok[1], out, outsz);
    } else if (n == 1 && strcmp(tok[0], "MEM") == 0) {
        snprintf(out, outsz, "MEM rounds=%llu errors=%llu bytes=%zu", (unsigned long long)rounds,
                 (unsigned long long)errors, membuf_bytes);
    } else if (n == 1 && strcmp(tok[0], "STAT") == 0) {
        pthread_mutex_lock(&store_lock);
        unsigned long long keys = nkeys, seq = last_seq;
        pthread_mutex_unlock(&store_lock);
        snprintf(out, outsz, "STAT keys=%llu seq=%llu uptime_ms=%llu memrounds=%llu memerrors=%llu",
                 keys, seq, (unsigned long long)uptime_ms(), (unsigned long long)rounds,
                 (unsigned long long)errors);
    } else {
        snprintf(out, outsz, "ERR bad-request");
    }
}

static int send_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static int reply(int fd, char *line)
{
    char out[LINE_MAX_LEN];
    size_t len = strlen(line);
    if (len > 0 && line[len - 1] == '\r')
        line[len - 1] = 0;
    handle(line, out, sizeof out - 1);
    size_t n = strlen(out);
    out[n++] = '\n';
    return send_all(fd, out, n);
}

static void *client_thread(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[LINE_MAX_LEN];
    size_t have = 0;
    int discarding = 0; /* inside an over-long line, already answered */
    for (;;) {
        ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        char *start = buf, *nl;
        while ((nl = memchr(start, '\n', have - (size_t)(start - buf))) != NULL) {
            *nl = 0;
            if (!discarding && reply(fd, start) != 0)
                goto done;
            discarding = 0;
            start = nl + 1;
        }
        have -= (size_t)(start - buf);
        memmove(buf, start, have);
        if (have == sizeof buf) { /* line too long: answer once, skip to its end */
            if (!discarding && send_all(fd, "ERR bad-request\n", 16) != 0)
                goto done;
            discarding = 1;
            have = 0;
        }
    }
done:
    close(fd);
    return NULL;
}

static void *accept_thread(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EINTR && errno != ECONNABORTED)
                usleep(10000); /* e.g. EMFILE: do not spin */
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, &attr, client_thread, (void *)(intptr_t)fd) != 0)
            close(fd);
    }
    return NULL;
}

static int listen_on(int port, int *bound_port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        close(fd);
        return -1;
    }
    *bound_port = ntohs(sa.sin_port);
    return fd;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(void)
{
    say("usage: colo-agent --port P --disk DEV --membuf-mib N");
    exit(2);
}

static long parse_num(const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !*s || *end || v < lo || v > hi)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    int port = 7000;
    long membuf_mib = 8;
    const char *disk = "/dev/vda";
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--port") == 0)
            port = (int)parse_num(argv[++i], 0, 65535);
        else if (strcmp(argv[i], "--disk") == 0)
            disk = argv[++i];
        else if (strcmp(argv[i], "--membuf-mib") == 0)
            membuf_mib = parse_num(argv[++i], 1, 4096);
        else
            usage();
    }
    signal(SIGPIPE, SIG_IGN);
    crc_init();

    if (open_disk(disk) != 0) {
        say("colo-agent: cannot use disk %s: %s", disk, strerror(errno));
        return 1;
    }
    uint64_t replayed = replay();

    membuf_bytes = (size_t)membuf_mib << 20;
    void *mem = mmap(NULL, membuf_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (mem == MAP_FAILED) {
        say("colo-agent: cannot allocate %ld MiB: %s", membuf_mib, strerror(errno));
        return 1;
    }
    membuf = mem;

    int bound;
    int lfd = listen_on(port, &bound);
    if (lfd < 0) {
        say("colo-agent: cannot listen on port %d: %s", port, strerror(errno));
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, memcheck_thread, NULL) != 0 ||
        pthread_create(&t, NULL, accept_thread, (void *)(intptr_t)lfd) != 0) {
        say("colo-agent: cannot start threads");
        return 1;
    }
    say("colo-agent: ready port=%d disk=%s replayed=%llu", bound, disk,
        (unsigned long long)replayed);

    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (uint64_t hb = 1;; hb++) {
        next.tv_sec += 1;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
        pthread_mutex_lock(&store_lock);
        unsigned long long keys = nkeys, seq = last_seq;
        pthread_mutex_unlock(&store_lock);
        say("colo-agent: hb=%llu uptime_ms=%llu keys=%llu seq=%llu memrounds=%llu memerrors=%llu",
            (unsigned long long)hb, (unsigned long long)uptime_ms(), keys, seq,
            (unsigned long long)__atomic_load_n(&mem_rounds, __ATOMIC_RELAXED),
            (unsigned long long)__atomic_load_n(&mem_errors, __ATOMIC_RELAXED));
    }
}
