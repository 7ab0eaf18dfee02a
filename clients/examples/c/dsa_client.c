/* SPDX-License-Identifier: MIT */
/*
 * A siov client in C, written from protocol/SPEC.md and protocol/include/siov.h alone, with
 * <linux/idxd.h> (linux-libc-dev) for the descriptors and libmsgpack (libmsgpack-dev) for the
 * bodies. It negotiates, registers a memfd, creates a dedicated-WQ mdev, learns its WQ from
 * DEVICE_GET_INFO, maps its memory in the mdev's default domain and runs: a MEMMOVE, a CRCGEN
 * (the CRC-32C check value), a BATCH of two, and a MEMMOVE from an unmapped page (a fault: a
 * partial completion and an EVENT_FAULT). Each result is checked; it prints "all checks passed"
 * and exits 0, or names what failed and exits 1.
 *
 *     cc -O2 -Wall -I protocol/include clients/examples/c/dsa_client.c -lmsgpackc -o dsa_client
 *     ./dsa_client /run/siovd/siovd.sock
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/idxd.h>
#include <msgpack.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "siov.h"

#define MEM_SIZE (4u << 20)          /* one memfd, mapped at IOVA 0 */
#define SRC 0x000000u                /* IOVAs (= offsets in the memfd) */
#define DST 0x100000u
#define CRC_IN 0x200000u
#define LIST 0x201000u               /* batch list: 64-byte aligned */
#define RECORDS 0x300000u            /* completion records: 32-byte aligned */
#define UNMAPPED 0x800000u           /* past the mapping: faults */

static int sock = -1;
static uint16_t next_id = 1;
static uint8_t *mem;                 /* our view of the registered memory */
static int faults_seen;

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("FAIL: ", stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	va_end(ap);
	exit(1);
}

/* ---- the wire: one message is a header and a msgpack map (SPEC §1-§3) -------------------- */

static void send_msg(uint16_t command, const msgpack_sbuffer *body, int fd)
{
	struct siov_header h = {
		.msg_id = next_id++, .command = command,
		.size = (uint32_t)(SIOV_HEADER_SIZE + body->size), .flags = SIOV_TYPE_COMMAND,
	};
	struct iovec iov[2] = { { &h, sizeof(h) }, { body->data, body->size } };
	char ctl[CMSG_SPACE(sizeof(int))];
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = body->size ? 2 : 1 };
	if (fd >= 0) { /* fds ride on the message's own sendmsg (SPEC §1) */
		memset(ctl, 0, sizeof(ctl));
		m.msg_control = ctl;
		m.msg_controllen = sizeof(ctl);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	if (sendmsg(sock, &m, 0) != (ssize_t)h.size)
		die("sendmsg: %s", strerror(errno));
}

static void read_exact(void *buf, size_t n)
{
	uint8_t *p = buf;
	while (n) {
		ssize_t got = read(sock, p, n);
		if (got <= 0)
			die("the daemon closed the connection");
		p += got;
		n -= (size_t)got;
	}
}

struct msg {
	struct siov_header h;
	char *raw;
	msgpack_unpacked body;
};

static void recv_msg(struct msg *m)
{
	read_exact(&m->h, sizeof(m->h));
	size_t n = m->h.size - SIOV_HEADER_SIZE;
	m->raw = malloc(n ? n : 1);
	read_exact(m->raw, n);
	msgpack_unpacked_init(&m->body);
	size_t off = 0;
	if (n && msgpack_unpack_next(&m->body, m->raw, n, &off) != MSGPACK_UNPACK_SUCCESS)
		die("a body that is not msgpack");
}

static void free_msg(struct msg *m)
{
	msgpack_unpacked_destroy(&m->body);
	free(m->raw);
}

static const msgpack_object *field(const struct msg *m, const char *key)
{
	const msgpack_object *o = &m->body.data;
	if (o->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
		    !memcmp(k->via.str.ptr, key, k->via.str.size))
			return &o->via.map.ptr[i].val;
	}
	return NULL;
}

static uint64_t uint_of(const msgpack_object *o, const char *what)
{
	if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		die("%s: expected an unsigned integer", what);
	return o->via.u64;
}

static void str_of(const msgpack_object *o, char *out, size_t cap, const char *what)
{
	if (!o || o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap)
		die("%s: expected a string", what);
	memcpy(out, o->via.str.ptr, o->via.str.size);
	out[o->via.str.size] = 0;
}

static void on_event(const struct msg *m)
{
	if (m->h.command == SIOV_CMD_EVENT_FAULT) {
		faults_seen++;
		printf("event: EVENT_FAULT iova %#llx reason %#llx\n",
		       (unsigned long long)uint_of(field(m, "iova"), "iova"),
		       (unsigned long long)uint_of(field(m, "reason"), "reason"));
	}
}

/* Send a command and wait for its reply; events that arrive meanwhile are handled. */
static void call(uint16_t command, const msgpack_sbuffer *body, int fd, struct msg *reply)
{
	uint16_t id = next_id;
	send_msg(command, body, fd);
	for (;;) {
		recv_msg(reply);
		if (reply->h.command >= SIOV_EVENT_BASE) {
			on_event(reply);
			free_msg(reply);
			continue;
		}
		if (reply->h.msg_id != id)
			die("reply to msg_id %u, expected %u", reply->h.msg_id, id);
		if (reply->h.flags & SIOV_FLAG_ERROR) {
			char text[512] = "";
			const msgpack_object *msg = field(reply, "message");
			if (msg && msg->type == MSGPACK_OBJECT_STR && msg->via.str.size < sizeof(text))
				memcpy(text, msg->via.str.ptr, msg->via.str.size);
			die("command %#x: errno %u (%s): %s", command, reply->h.error,
			    strerror((int)reply->h.error), text);
		}
		return;
	}
}

/* ---- body building ---------------------------------------------------------------------- */

struct body {
	msgpack_sbuffer buf;
	msgpack_packer pk;
};

static void body_init(struct body *b, uint32_t fields)
{
	msgpack_sbuffer_init(&b->buf);
	msgpack_packer_init(&b->pk, &b->buf, msgpack_sbuffer_write);
	msgpack_pack_map(&b->pk, fields);
}

static void key(struct body *b, const char *k)
{
	msgpack_pack_str(&b->pk, strlen(k));
	msgpack_pack_str_body(&b->pk, k, strlen(k));
}

static void put_uint(struct body *b, const char *k, uint64_t v)
{
	key(b, k);
	msgpack_pack_uint64(&b->pk, v);
}

static void put_str(struct body *b, const char *k, const char *v)
{
	key(b, k);
	msgpack_pack_str(&b->pk, strlen(v));
	msgpack_pack_str_body(&b->pk, v, strlen(v));
}

static void put_bin(struct body *b, const char *k, const void *v, size_t n)
{
	key(b, k);
	msgpack_pack_bin(&b->pk, n);
	msgpack_pack_bin_body(&b->pk, v, n);
}

/* ---- the accelerator --------------------------------------------------------------------- */

static char uuid[64];

static void submit(const struct dsa_hw_desc *descs, unsigned count)
{
	struct body b;
	struct msg r;
	body_init(&b, 2);
	put_str(&b, "device", uuid);
	put_bin(&b, "descriptors", descs, count * sizeof(*descs));
	call(SIOV_CMD_SUBMIT, &b.buf, -1, &r);
	if (uint_of(field(&r, "accepted"), "accepted") != count)
		die("SUBMIT accepted fewer than %u descriptors", count);
	free_msg(&r);
	msgpack_sbuffer_destroy(&b.buf);
}

/* Completion is the record: poll its status byte (the daemon writes byte 0 last). */
static struct dsa_completion_record *wait_record(uint64_t iova)
{
	struct dsa_completion_record *cr = (void *)(mem + iova);
	for (int i = 0; i < 50000 && !cr->status; i++) {
		struct timespec ts = { 0, 100000 };
		nanosleep(&ts, NULL);
	}
	if (!cr->status)
		die("the record at %#llx was never written", (unsigned long long)iova);
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	return cr;
}

static struct dsa_hw_desc desc(uint8_t opcode, uint64_t record)
{
	struct dsa_hw_desc d;
	memset(&d, 0, sizeof(d));
	d.opcode = opcode;
	d.flags = IDXD_OP_FLAG_CRAV | IDXD_OP_FLAG_RCR;
	d.completion_addr = record;
	return d;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
		return 2;
	}
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", argv[1]);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die("connect %s: %s", argv[1], strerror(errno));

	struct body b;
	struct msg r;
	char text[64];

	/* VERSION: no `features` key asks for all of them (SPEC §6.1) */
	body_init(&b, 2);
	put_uint(&b, "major", SIOV_PROTOCOL_MAJOR);
	put_uint(&b, "minor", SIOV_PROTOCOL_MINOR);
	call(SIOV_CMD_VERSION, &b.buf, -1, &r);
	str_of(field(&r, "auth"), text, sizeof(text), "auth");
	if (strcmp(text, "none"))
		die("this example speaks only to a daemon with auth \"none\", not %s", text);
	free_msg(&r);
	msgpack_sbuffer_destroy(&b.buf);

	/* memory: a sealable memfd, passed with MEM_REGISTER (the daemon closes its copy) */
	int fd = memfd_create("siov-c-example", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, MEM_SIZE) < 0)
		die("memfd: %s", strerror(errno));
	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	body_init(&b, 1);
	put_uint(&b, "size", MEM_SIZE);
	call(SIOV_CMD_MEM_REGISTER, &b.buf, fd, &r);
	uint64_t phys = uint_of(field(&r, "phys"), "phys");
	free_msg(&r);
	msgpack_sbuffer_destroy(&b.buf);
	close(fd);

	/* a dedicated-WQ mdev: the reply is the device description itself */
	body_init(&b, 2);
	put_str(&b, "parent", "dsa0");
	put_str(&b, "type_id", "dsa-1dwq");
	call(SIOV_CMD_MDEV_CREATE, &b.buf, -1, &r);
	str_of(field(&r, "uuid"), uuid, sizeof(uuid), "uuid");
	uint64_t domain = uint_of(field(&r, "domain_id"), "domain_id");
	free_msg(&r);
	msgpack_sbuffer_destroy(&b.buf);

	/* its WQ, so we never keep more than `size` descriptors outstanding */
	body_init(&b, 1);
	put_str(&b, "device", uuid);
	call(SIOV_CMD_DEVICE_GET_INFO, &b.buf, -1, &r);
	const msgpack_object *wq = field(&r, "wq");
	if (!wq || wq->type != MSGPACK_OBJECT_MAP)
		die("DEVICE_GET_INFO has no wq");
	for (uint32_t i = 0; i < wq->via.map.size; i++) {
		const msgpack_object_kv *kv = &wq->via.map.ptr[i];
		if (kv->key.via.str.size == 4 && !memcmp(kv->key.via.str.ptr, "size", 4))
			printf("mdev %s: WQ of %llu entries\n", uuid,
			       (unsigned long long)kv->val.via.u64);
	}
	free_msg(&r);
	msgpack_sbuffer_destroy(&b.buf);

	/* map the whole memfd at IOVA 0 in the mdev's default domain */
	body_init(&b, 4);
	put_uint(&b, "domain", domain);
	put_uint(&b, "phys", phys);
	put_uint(&b, "size", MEM_SIZE);
	put_uint(&b, "iova", 0);
	call(SIOV_CMD_MAP, &b.buf, -1, &r);
	free_msg(&r);
	msgpack_sbuffer_destroy(&b.buf);

	/* 1. MEMMOVE 4096 bytes */
	for (unsigned i = 0; i < 4096; i++)
		mem[SRC + i] = (uint8_t)(i * 7 + 1);
	struct dsa_hw_desc d = desc(DSA_OPCODE_MEMMOVE, RECORDS);
	d.src_addr = SRC;
	d.dst_addr = DST;
	d.xfer_size = 4096;
	submit(&d, 1);
	struct dsa_completion_record *cr = wait_record(RECORDS);
	if ((cr->status & DSA_COMP_STATUS_MASK) != DSA_COMP_SUCCESS || memcmp(mem + SRC, mem + DST, 4096))
		die("MEMMOVE: status %#x", cr->status);
	printf("MEMMOVE: ok\n");

	/* 2. CRCGEN of "123456789", seed 0: the CRC-32C check value, crc_val a u64 */
	memcpy(mem + CRC_IN, "123456789", 9);
	d = desc(DSA_OPCODE_CRCGEN, RECORDS + 32);
	d.src_addr = CRC_IN;
	d.xfer_size = 9;
	d.crc_seed = 0;
	submit(&d, 1);
	cr = wait_record(RECORDS + 32);
	if ((cr->status & DSA_COMP_STATUS_MASK) != DSA_COMP_SUCCESS || cr->crc_val != 0xE3069283u)
		die("CRCGEN: status %#x crc %#llx", cr->status, (unsigned long long)cr->crc_val);
	printf("CRCGEN: ok (%#llx)\n", (unsigned long long)cr->crc_val);

	/* 3. a BATCH of two: a MEMFILL and a MEMMOVE; bytes_completed counts descriptors */
	struct dsa_hw_desc *list = (void *)(mem + LIST);
	list[0] = desc(DSA_OPCODE_MEMFILL, RECORDS + 64);
	list[0].pattern = 0x5a5a5a5a5a5a5a5aull;
	list[0].dst_addr = DST + 0x10000;
	list[0].xfer_size = 8192;
	list[1] = desc(DSA_OPCODE_MEMMOVE, RECORDS + 96);
	list[1].src_addr = SRC;
	list[1].dst_addr = DST + 0x20000;
	list[1].xfer_size = 4096;
	d = desc(DSA_OPCODE_BATCH, RECORDS + 128);
	d.desc_list_addr = LIST;
	d.desc_count = 2;
	submit(&d, 1);
	cr = wait_record(RECORDS + 128);
	if ((cr->status & DSA_COMP_STATUS_MASK) != DSA_COMP_SUCCESS || cr->bytes_completed != 2)
		die("BATCH: status %#x, %u done", cr->status, cr->bytes_completed);
	if (mem[DST + 0x10000 + 8191] != 0x5a || memcmp(mem + SRC, mem + DST + 0x20000, 4096))
		die("BATCH: wrong data");
	printf("BATCH: ok\n");

	/* 4. a fault: the source is not mapped; without BOF the descriptor completes partially
	 * (PAGE_FAULT_NOBOF; the code is in the low bits, 0x80 would mean a write fault) and the
	 * domain's owner, us, receives EVENT_FAULT. */
	d = desc(DSA_OPCODE_MEMMOVE, RECORDS + 160);
	d.src_addr = UNMAPPED;
	d.dst_addr = DST;
	d.xfer_size = 4096;
	submit(&d, 1);
	cr = wait_record(RECORDS + 160);
	if ((cr->status & DSA_COMP_STATUS_MASK) != DSA_COMP_PAGE_FAULT_NOBOF ||
	    (cr->status & DSA_COMP_STATUS_WRITE) || cr->fault_addr != UNMAPPED || cr->bytes_completed)
		die("fault: status %#x fault_addr %#llx", cr->status,
		    (unsigned long long)cr->fault_addr);
	while (!faults_seen) { /* events travel on their own: wait for it, up to 10 s */
		struct pollfd p = { sock, POLLIN, 0 };
		if (poll(&p, 1, 10000) != 1)
			die("no EVENT_FAULT");
		recv_msg(&r);
		if (r.h.command >= SIOV_EVENT_BASE)
			on_event(&r);
		free_msg(&r);
	}
	printf("fault: ok\n");

	close(sock); /* the daemon frees the session's mdev, mapping and memory */
	printf("all checks passed\n");
	return 0;
}
