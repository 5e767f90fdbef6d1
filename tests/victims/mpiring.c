/* An MPI ring (mpich, the grid's MPI probe): rank r passes a counter to rank r+1 and
 * rank 0 checks that it came back increased by exactly size-1, lap after lap: a message
 * lost, duplicated or out of order between the ranks is a FAIL.  Rank 0 reports
 * "ok LAP" every 10 laps on stdout.  Build with mpicc; run under mpiexec. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long v = 0;
    for (long lap = 0;; lap++) {
        if (rank == 0) {
            v = lap * size;
            MPI_Send(&v, 1, MPI_LONG, 1 % size, 0, MPI_COMM_WORLD);
            MPI_Recv(&v, 1, MPI_LONG, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            if (v != lap * size + size - 1) {
                printf("FAIL lap %ld: %ld came back\n", lap, v);
                fflush(stdout);
                MPI_Abort(MPI_COMM_WORLD, 3);
            }
            if (lap % 10 == 0) {
                printf("ok %ld\n", lap);
                fflush(stdout);
            }
        } else {
            MPI_Recv(&v, 1, MPI_LONG, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            v++;
            MPI_Send(&v, 1, MPI_LONG, (rank + 1) % size, 0, MPI_COMM_WORLD);
        }
        usleep(10000);
    }
}
