/* portal_bench: back-to-back 4 KiB MEMMOVEs through a DSA WQ portal, as an unmodified DSA
 * program does them (MOVDIR64B on a dedicated WQ, ENQCMD with retry on a shared one),
 * completions polled in this process's memory.  Run it under siov-run.
 *
 * usage: portal_bench /dev/dsa/wqD.Q dedicated|shared SECONDS WINDOW
 * prints: "<descriptors> <seconds>"
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct desc {
	uint32_t pasid_priv;
	uint32_t flags_opcode;
	uint64_t completion;
	uint64_t src;
	uint64_t dst;
	uint32_t size;
	uint16_t int_handle;
	uint16_t rsvd;
	uint8_t op_specific[24];
} __attribute__((aligned(64)));

struct record {
	volatile uint8_t status;
	uint8_t rest[31];
} __attribute__((aligned(32)));

#define OP_MEMMOVE 0x03
#define FLAG_CRAV 0x04
#define FLAG_RCR 0x08
#define XFER 4096
#define MAX_WINDOW 64

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void submit(void *portal, int shared, struct desc *d)
{
	unsigned char retry;

	if (!shared) {
		__asm__ volatile("sfence\n\tmovdir64b (%1), %0" ::"r"(portal), "r"(d) : "memory");
		return;
	}
	do {
		__asm__ volatile("sfence\n\tenqcmd (%2), %1\n\tsetz %0"
				 : "=r"(retry)
				 : "r"(portal), "r"(d)
				 : "memory", "cc");
	} while (retry);
}

int main(int argc, char **argv)
{
	static struct desc descs[MAX_WINDOW];
	static struct record records[MAX_WINDOW];
	int shared, window, fd;
	double seconds, start, end;
	long done = 0;
	char *buf;
	void *portal;

	if (argc != 5) {
		fprintf(stderr, "usage: %s WQ dedicated|shared SECONDS WINDOW\n", argv[0]);
		return 2;
	}
	shared = strcmp(argv[2], "shared") == 0;
	seconds = atof(argv[3]);
	window = atoi(argv[4]);
	if (window < 1 || window > MAX_WINDOW)
		return 2;
	fd = open(argv[1], O_RDWR);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	portal = mmap(NULL, 0x1000, PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (portal == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	buf = aligned_alloc(4096, (size_t)2 * window * XFER);
	memset(buf, 0x5a, (size_t)2 * window * XFER);
	for (int i = 0; i < window; i++) {
		memset(&descs[i], 0, sizeof(descs[i]));
		descs[i].flags_opcode = (OP_MEMMOVE << 24) | FLAG_CRAV | FLAG_RCR;
		descs[i].completion = (uintptr_t)&records[i];
		descs[i].src = (uintptr_t)(buf + (size_t)2 * i * XFER);
		descs[i].dst = (uintptr_t)(buf + (size_t)(2 * i + 1) * XFER);
		descs[i].size = XFER;
	}
	start = now();
	end = start + seconds;
	for (int i = 0; i < window; i++)
		submit(portal, shared, &descs[i]);
	for (int i = 0;; i = (i + 1) % window) {
		while (records[i].status == 0)
			__builtin_ia32_pause();
		if (records[i].status != 1) {
			fprintf(stderr, "descriptor failed: status %#x\n", records[i].status);
			return 1;
		}
		done++;
		records[i].status = 0;
		if (now() >= end)
			break;
		submit(portal, shared, &descs[i]);
	}
	printf("%ld %.6f\n", done, now() - start);
	return 0;
}
