/* Opens, reads to EOF and closes one file in a loop for a given time, from one thread:
 * prints "opens_per_second median_microseconds". Used by bench.py (a Python loop costs more
 * than what is measured). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    double secs = atof(argv[2]), start = now(), *lat = malloc(sizeof(double) * 4000000);
    char buf[65536];
    long n = 0;
    while (now() - start < secs && n < 4000000) {
        double t = now();
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        ssize_t r, total = 0;
        while ((r = read(fd, buf, sizeof buf)) > 0) total += r;
        if (r < 0 || total == 0) { perror("read"); return 1; }
        close(fd);
        lat[n++] = now() - t;
    }
    double elapsed = now() - start;
    qsort(lat, n, sizeof(double), cmp);
    printf("%.1f %.2f\n", n / elapsed, lat[n / 2] * 1e6);
    return 0;
}
