/* qwickd: placeholder entry point until the server lands. */
#include <stdio.h>

int main(void)
{
    fputs("qwickd: not implemented yet\n", stderr);
    return 1;
}
