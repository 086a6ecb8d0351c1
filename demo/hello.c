/* The sample program `make demo` cross-compiles and signs through qwickd. */
#include <stdio.h>

int main(void)
{
    puts("Hello from a Qwick-signed program.");
    return 0;
}
