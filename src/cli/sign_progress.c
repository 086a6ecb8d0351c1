/* qwick sign: what the user sees while files are signed (sign.h): the
 * progress line on a terminal's stderr (files done, the last one, and each
 * file waiting for a queued request with its status), failures as they
 * happen, and with --async a FILE<TAB>REQUEST_ID line on stdout per accepted
 * file as soon as it is accepted. Below the run, the file and the request,
 * which all report here. */
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cli.h"
#include "sign.h"

const char *sign_base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s != NULL ? s + 1 : path;
}

/* Columns of the terminal on stderr (80 when it does not say). */
static size_t term_width(void)
{
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 80;
}

/* Appends to the progress line; stops quietly when it is full. */
static void line_add(char *line, size_t cap, size_t *k, const char *a, const char *b)
{
    int n = snprintf(line + *k, cap - *k, "%s%s", a, b);
    if (n > 0)
        *k = *k + (size_t)n < cap ? *k + (size_t)n : cap - 1;
}

/* Redraws the progress line (terminal only, r->mu held): files done, the
 * last one, then each file waiting for a queued request with its status,
 * cut to the terminal's width so that '\r' keeps redrawing one line. */
static void draw_progress(run *r)
{
    char line[1024], count[48];
    size_t k = 0, width = term_width();

    fputs("\r\033[K", stderr);
    if (r->done >= r->njobs)
        return;
    snprintf(count, sizeof(count), "[%zu/%zu]", r->done, r->njobs);
    line_add(line, sizeof(line), &k, count, "");
    if (r->last != NULL)
        line_add(line, sizeof(line), &k, " ", sign_base_name(r->last->path));
    for (size_t i = 0; i < r->nworkers; i++) {
        const worker *w = &r->workers[i];
        if (w->wait_job == NULL)
            continue;
        line_add(line, sizeof(line), &k, " | ", sign_base_name(w->wait_job->path));
        line_add(line, sizeof(line), &k, " ", w->wait_status);
    }
    if (width > 1 && k >= width)
        line[width - 1] = '\0';
    fputs(line, stderr);
}

void sign_progress_waiting(worker *w, const job *jb, const char *status)
{
    run *r = w->r;
    pthread_mutex_lock(&r->mu);
    w->wait_job = status != NULL ? jb : NULL;
    snprintf(w->wait_status, sizeof(w->wait_status), "%s", status != NULL ? status : "");
    if (r->tty) {
        draw_progress(r);
        fflush(stderr);
    }
    pthread_mutex_unlock(&r->mu);
}

void sign_progress_done(run *r, job *jb)
{
    pthread_mutex_lock(&r->mu);
    r->done++;
    if (jb->ok)
        r->nok++;
    else
        r->nfail++;
    r->last = jb;
    if (r->tty)
        fputs("\r\033[K", stderr);
    /* Printed at once: an interrupted run has still said what it submitted. */
    if (r->o->async && jb->ok && !r->o->json) {
        printf("%s\t%s\n", jb->path, jb->request_id);
        fflush(stdout);
    }
    if (!jb->ok)
        fprintf(stderr, "%s: %s: %s\n", qk_progname, jb->path, jb->error);
    if (r->tty)
        draw_progress(r);
    fflush(stderr);
    pthread_mutex_unlock(&r->mu);
}
