// Package malloc, imported by a command, holds glibc's malloc to one arena
// from the moment the program is loaded, unless MALLOC_ARENA_MAX is set in
// the environment (which glibc then reads itself).
//
// The agent's memory outside the Go heap is the C libraries': ONNX Runtime
// and the system libwebp. glibc gives threads that malloc arenas of their
// own (up to 8 per core), and freed memory stays in them. Go runs C calls on
// any of its threads, so over hours most of them get one. On the 200-frame
// RSS run (agent/rss_test.go) the agent peaked at 154 MB with glibc's
// default and 120 MB with one arena, at the same frames per second. A
// mallopt call from main is too late: the Go runtime's threads have made
// their arenas by then (144 MB), hence the constructor.
package malloc

/*
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((constructor)) static void forest_malloc_one_arena(void) {
	if (getenv("MALLOC_ARENA_MAX") == NULL) mallopt(M_ARENA_MAX, 1);
}

// heaps counts the arenas malloc_info reports (for the test).
static int heaps(void) {
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (f == NULL) return -1;
	malloc_info(0, f);
	fclose(f);
	int n = 0;
	for (char *p = buf; (p = strstr(p, "<heap nr=")) != NULL; p++) n++;
	free(buf);
	return n;
}
*/
import "C"

import "unsafe"

// For the test: the number of malloc arenas, and a malloc and free.
func arenas() int             { return int(C.heaps()) }
func cMalloc() unsafe.Pointer { return C.malloc(1024) }
func cFree(p unsafe.Pointer)  { C.free(p) }
