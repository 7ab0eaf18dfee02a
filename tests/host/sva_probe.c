/* sva_probe: may a process's descriptor reach another process's memory through a shared WQ?
 *
 * usage: sva_probe hold FILL WQ     map a page at ADDR filled with FILL, open WQ (a PASID
 *                                   bound to us), print "ready", wait for stdin to close
 *        sva_probe copy WQ FILL|-   (FILL: map our own page at ADDR with FILL first; -: leave
 *                                   ADDR unmapped) ENQCMD a MEMMOVE of 64 bytes from ADDR to a
 *                                   buffer of ours; print "status S byte B"
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ADDR ((void *)0x7e5500000000UL)

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

static volatile uint8_t record[32] __attribute__((aligned(32)));
static uint8_t dst[64] __attribute__((aligned(64)));

static void map_fill(int fill)
{
	void *p = mmap(ADDR, 4096, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != ADDR) {
		perror("mmap");
		exit(2);
	}
	memset(p, fill, 4096);
}

int main(int argc, char **argv)
{
	struct desc d;
	unsigned char retry;
	void *portal;
	char c;
	int fd, tries = 0;

	if (argc == 4 && strcmp(argv[1], "hold") == 0) {
		map_fill((int)strtol(argv[2], NULL, 0));
		fd = open(argv[3], O_RDWR);
		if (fd < 0) {
			perror(argv[3]);
			return 1;
		}
		printf("ready\n");
		fflush(stdout);
		while (read(0, &c, 1) > 0)
			;
		return 0;
	}
	if (argc != 4 || strcmp(argv[1], "copy") != 0)
		return 2;
	if (strcmp(argv[3], "-") != 0)
		map_fill((int)strtol(argv[3], NULL, 0));
	fd = open(argv[2], O_RDWR);
	if (fd < 0) {
		perror(argv[2]);
		return 1;
	}
	portal = mmap(NULL, 0x1000, PROT_WRITE, MAP_SHARED, fd, 0);
	if (portal == MAP_FAILED)
		return 1;
	memset(&d, 0, sizeof(d));
	d.flags_opcode = (0x03u << 24) | 0x04 | 0x08; /* MEMMOVE, CRAV | RCR, no BOF */
	d.completion = (uintptr_t)record;
	d.src = (uintptr_t)ADDR;
	d.dst = (uintptr_t)dst;
	d.size = 64;
	do {
		__asm__ volatile("sfence\n\tenqcmd (%2), %1\n\tsetz %0"
				 : "=r"(retry)
				 : "r"(portal), "r"(&d)
				 : "memory", "cc");
	} while (retry && ++tries < 1000);
	while (record[0] == 0)
		__builtin_ia32_pause();
	printf("status %#x byte %#x\n", record[0], dst[0]);
	return 0;
}
