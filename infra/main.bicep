// batch-terminator: everything the Function App needs, in one resource group, with one user-assigned
// managed identity used for host storage, the queues, telemetry and Batch. Deploy with `azd up` or
// `az deployment group create` (docs/DEPLOY.md). The Batch account is NOT created here: it is an existing
// account (possibly in another resource group of the same subscription) on which the identity is granted a
// custom role with exactly the Batch operations the app calls (modules/batch-role.bicep).
targetScope = 'resourceGroup'

// --- environment -------------------------------------------------------------------------------------------
@minLength(1)
@maxLength(64)
@description('Environment name (azd: AZURE_ENV_NAME); seeds resource names and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region for all resources. Must offer the Flex Consumption plan.')
param location string = resourceGroup().location

@description('Optional: override the function app name (default func-<token>).')
param functionAppName string = ''

@description('Optional: override the storage account name (default st<token>).')
param storageAccountName string = ''

@description('Optional: object id of the person or pipeline deploying (azd: AZURE_PRINCIPAL_ID). Gets Storage Queue Data Contributor so it can send messages and read the poison queue. Empty: no grant.')
param principalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Type of principalId (azd: AZURE_PRINCIPAL_TYPE, default User; ServicePrincipal when a pipeline deploys).')
param principalType string = 'User'

// --- the existing Batch account ----------------------------------------------------------------------------
@minLength(3)
@maxLength(24)
@description('Name of the EXISTING Batch account whose jobs the app terminates.')
param batchAccountName string

@minLength(1)
@description('Resource group of the existing Batch account (same subscription).')
param batchAccountResourceGroup string

@description('Optional BATCH_ACCOUNTS: more accounts by alias, "alias=https://{account}.{region}.batch.azure.com,..." (docs/CONTRACT.md §2). Empty: only the account above (alias default).')
param batchAccounts string = ''

@description('The existing Batch accounts named in batchAccounts, as [{name, resourceGroup}] (same subscription): the identity gets the app\'s Batch role on each.')
param additionalBatchAccounts array = []

// --- contract settings (docs/CONTRACT.md §2) -------------------------------------------------------
@minLength(3)
@maxLength(56) // the poison queue appends "-poison" and queue names are at most 63 characters
@description('Trigger queue name (TERMINATE_QUEUE_NAME). The poison queue is "<name>-poison".')
param terminateQueueName string = 'batch-terminate'

@description('Batch REST api-version (BATCH_API_VERSION).')
param batchApiVersion string = '2025-06-01'

@minValue(1)
@maxValue(30)
@description('Server-side Batch timeout in seconds (BATCH_TIMEOUT_SECONDS).')
param batchTimeoutSeconds int = 30

@minValue(1)
@maxValue(100)
@description('Attempts per message before the host moves it to the poison queue (overrides host.json).')
param maxDequeueCount int = 5

// --- guards (docs/CONTRACT.md §5a) ------------------------------------------------------------------------------
@description('TERMINATE_ALLOWED_JOB_ID_PREFIXES: comma-separated job id prefixes (case-insensitive) that may be terminated. Empty: every id.')
param terminateAllowedJobIdPrefixes string = ''

@description('TERMINATE_HONOR_KEEP: read each job first and refuse jobs whose metadata has batch-terminator-keep=true.')
param terminateHonorKeep bool = false

@description('TERMINATE_DRY_RUN: never call Job - Terminate; log outcome dry_run instead (for rolling out a new producer).')
param terminateDryRun bool = false

// --- confirmation (docs/CONTRACT.md §5b) ------------------------------------------------------------------------
@minLength(3)
@maxLength(56) // the host's poison queue for it appends "-poison"
@description('CONFIRM_QUEUE_NAME: queue of pending confirmation checks (always set: the confirm_termination binding names it).')
param confirmQueueName string = 'batch-terminate-confirm'

@minValue(0)
@maxValue(604800) // a queue message can stay invisible for at most 7 days
@description('CONFIRM_AFTER_SECONDS: seconds after a 202 at which the job is checked; 0 turns confirmation off. On by default: 300 s lets Batch kill running tasks and run job release tasks (seconds to minutes), and 3 checks give a job 15 minutes before it is a TerminationStuck record (README, "Choices where the contract is silent").')
param confirmAfterSeconds int = 300

@minValue(1)
@maxValue(100)
@description('CONFIRM_MAX_CHECKS: checks before a job still not finished becomes a TerminationStuck record.')
param confirmMaxChecks int = 3

@description('CONFIRM_FORCE: a job still terminating at a check is terminated once more with force=true.')
param confirmForce bool = false

// --- the kill switch (docs/CONTRACT.md §10) ---------------------------------------------------------------------
@minLength(3)
@maxLength(56) // the host's poison queue for it appends "-poison"
@description('INCIDENT_QUEUE_NAME: queue of kill-switch commands (always set: the kill_switch binding names it).')
param incidentQueueName string = 'batch-kill-switch'

@minLength(3)
@maxLength(63)
@description('INCIDENT_TABLE_NAME: the table holding incidents (letters and digits, starting with a letter).')
param incidentTableName string = 'batchterminatorincidents'

@allowed([
  'auto'
  'manual'
])
@description('KILL_SWITCH_APPROVAL: auto = an incident acts as soon as it is planned; manual = it waits for `batch-terminator incidents approve`.')
param killSwitchApproval string = 'auto'

@description('KILL_SWITCH_DISABLE_SCHEDULES: an incident also disables the job schedules that would start its jobs again.')
param killSwitchDisableSchedules bool = true

@description('KILL_SWITCH_SCALE_POOLS: an incident also scales its jobs\' pools to zero; grants pools/write on the Batch accounts (only then).')
param killSwitchScalePools bool = false

@description('Create the kill-switch action group (Azure Function receiver on alert_terminate; azd: KILL_SWITCH_RECEIVER). Its key is read from the deployed function, so turn it on once the code is deployed (docs/DEPLOY.md, "The kill switch").')
param killSwitchReceiver bool = false

@minValue(0)
@description('Monthly Cost Management budget on the Batch account\'s resource group, in the billing currency (azd: BUDGET_AMOUNT). 0: no budget.')
param budgetAmount int = 0

@minValue(1)
@maxValue(1000)
@description('Percent of budgetAmount (actual cost) at which the budget calls the kill switch (azd: BUDGET_KILL_THRESHOLD).')
param budgetKillThreshold int = 100

@minValue(1)
@maxValue(1000)
@description('Percent of budgetAmount (forecast cost) at which the budget only mails budgetContactEmails (azd: BUDGET_WARNING_THRESHOLD).')
param budgetWarningThreshold int = 80

@description('Comma-separated e-mail addresses the budget notifies (azd: BUDGET_CONTACT_EMAILS). Empty: alertEmail, if set.')
param budgetContactEmails string = ''

@description('First day of the budget (yyyy-MM-01; azd: BUDGET_START_DATE). Empty: the first of the current month when first deployed — pin it to keep redeployments stable.')
param budgetStartDate string = ''

@description('Deployment time, for the budget\'s default start month. Do not set.')
param deployedAt string = utcNow('yyyy-MM-01')

// --- worker ----------------------------------------------------------------------------------------------------
@minValue(1)
@maxValue(256) // Python 3.9+ workers take any positive count; 32 was the limit for 3.7 and 3.8
@description('PYTHON_THREADPOOL_THREAD_COUNT: worker threads on ONE instance. On Flex Consumption each queue function scales on its own instances, so an instance holds at most host.json batchSize + newBatchThreshold (16 + 8) messages of its one queue, plus a margin of 2: 26 (docs/SCALE.md).')
param pythonThreadpoolThreadCount int = 26

// --- operations: alert rules and the workbook ---------------------------------------------------------------------
@description('Optional e-mail address told when an alert rule fires (azd: ALERT_EMAIL). Empty: the rules still fire, visible in Azure Monitor > Alerts.')
param alertEmail string = ''

@minValue(0)
@description('Poison-record alert: fires when more than this many records of one code are written in 15 minutes (0: the first one).')
param poisonedAlertThreshold int = 0

@minValue(0)
@description('Configuration-error / host-moved alert: fires when more than this many occur in 15 minutes (0: the first one).')
param hostGaveUpAlertThreshold int = 0

// --- scale -------------------------------------------------------------------------------------------------
@allowed([
  512
  2048
  4096
])
@description('Flex Consumption instance memory in MB.')
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
@description('Flex Consumption maximum instance count (caps parallel Batch calls together with host.json batchSize).')
param maximumInstanceCount int = 40

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
@description('Storage account redundancy.')
param storageSkuName string = 'Standard_LRS'

@description('Allow SCM (Kudu) basic-auth publishing credentials (off: azd and Core Tools publish with Entra ID).')
param scmBasicAuthEnabled bool = false

// --- alert_terminate (docs/CONTRACT.md §9) ----------------------------------------------------------------------
@description('ALERT_JOB_ID_DIMENSION: alert dimension that carries the Batch job id.')
param alertJobIdDimension string = 'jobId'

@description('ALERT_RULES_ALLOWED: comma-separated alert rule names accepted (empty: every rule is accepted).')
param alertRulesAllowed string = ''

@description('ALERT_SELECT_JOB_ID_PREFIX: alerts that name no job (budgets) select active jobs whose id starts with this (empty: no such filter).')
param alertSelectJobIdPrefix string = ''

@description('ALERT_SELECT_POOL_ID: ... jobs running on this pool (executionInfo.poolId, else poolInfo.poolId).')
param alertSelectPoolId string = ''

@description('ALERT_SELECT_METADATA: ... jobs whose metadata has this key=value pair.')
param alertSelectMetadata string = ''

@minValue(1)
@description('ALERT_MAX_JOBS: the most jobs one alert may stop; more selected: nothing is enqueued, 409 TooManyJobs.')
param alertMaxJobs int = 100

// --- sweep_jobs ----------------------------------------------------------------------------------------------------

@description('SWEEP_SCHEDULE: NCRONTAB schedule of the sweep timer.')
param sweepSchedule string = '0 */15 * * * *'

@description('SWEEP_MAX_AGE_HOURS: jobs active longer than this many hours are swept (empty: policy off).')
param sweepMaxAgeHours string = ''

@description('SWEEP_IDLE_MINUTES: jobs with no active or running tasks, created more than this many minutes ago, are swept (empty: policy off).')
param sweepIdleMinutes string = ''

@description('SWEEP_JOB_ID_PREFIX: only jobs whose id starts with this prefix are swept (empty: all).')
param sweepJobIdPrefix string = ''

@description('SWEEP_DRY_RUN: log what would be terminated without terminating.')
param sweepDryRun bool = true

@minValue(1)
@description('SWEEP_MAX_JOBS: the most jobs one sweep run may enqueue; more matched: nothing is enqueued, an error is logged.')
param sweepMaxJobs int = 100

@description('SWEEP_ACCOUNTS: comma-separated account aliases to sweep (empty: every configured account).')
param sweepAccounts string = ''

@minValue(1)
@maxValue(64)
@description('SWEEP_CONCURRENCY: Job - Get Task Counts reads in flight at once.')
param sweepConcurrency int = 16

@minValue(1)
@maxValue(240) // well under the 5-minute functionTimeout of host.json
@description('SWEEP_RUN_BUDGET_SECONDS: no new read starts after this many seconds of a run.')
param sweepRunBudgetSeconds int = 120

// --- names ---------------------------------------------------------------------------------------------------
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var serviceName = 'terminator'
var appName = !empty(functionAppName) ? functionAppName : 'func-${resourceToken}'
var poisonQueueName = '${terminateQueueName}-poison'
var deploymentContainerName = 'app-package-${resourceToken}'

// --- identity --------------------------------------------------------------------------------------------------
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${resourceToken}'
  location: location
  tags: tags
}

// --- monitoring ------------------------------------------------------------------------------------------------
module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    publisherPrincipalId: identity.properties.principalId
  }
}

// --- storage: host storage, queues, deployment container, storage roles ----------------------------------------
module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    tags: tags
    name: !empty(storageAccountName) ? storageAccountName : 'st${resourceToken}'
    skuName: storageSkuName
    terminateQueueName: terminateQueueName
    poisonQueueName: poisonQueueName
    confirmQueueName: confirmQueueName
    incidentQueueName: incidentQueueName
    incidentTableName: incidentTableName
    deploymentContainerName: deploymentContainerName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    appPrincipalId: identity.properties.principalId
    operatorPrincipalId: principalId
    operatorPrincipalType: principalType
  }
}

// --- Batch: the app's role on the existing account, deployed at that account's resource group --------------------
module batchRole 'modules/batch-role.bicep' = {
  name: 'batch-role-${resourceToken}'
  scope: resourceGroup(batchAccountResourceGroup)
  params: {
    batchAccountName: batchAccountName
    principalId: identity.properties.principalId
    scalePools: killSwitchScalePools
  }
}

// --- Batch: the same role on every further account of BATCH_ACCOUNTS ---------------------------------------------------
module additionalBatchRoles 'modules/batch-role.bicep' = [for (account, i) in additionalBatchAccounts: {
  name: 'batch-role-${i}-${resourceToken}'
  scope: resourceGroup(account.resourceGroup)
  params: {
    batchAccountName: account.name
    principalId: identity.properties.principalId
    scalePools: killSwitchScalePools
  }
}]

// --- alert rules on the app's telemetry, and the operations workbook --------------------------------------------------
module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    nameSuffix: resourceToken
    alertEmail: alertEmail
    poisonedThreshold: poisonedAlertThreshold
    hostGaveUpThreshold: hostGaveUpAlertThreshold
    killSwitchReceiver: killSwitchReceiver
    functionAppId: functionApp.outputs.id
    functionAppHostName: functionApp.outputs.defaultHostName
  }
}

// --- the budget kill switch: a Cost Management budget on the Batch account's resource group (budgetAmount > 0) ------
// It watches where the Batch spending is. The kill notification (actual cost) goes to the kill-switch action group,
// which calls alert_terminate: a budget names no job, so it opens an incident (docs/CONTRACT.md §9, §10).
var budgetEmails = !empty(budgetContactEmails) ? split(replace(budgetContactEmails, ' ', ''), ',') : (!empty(alertEmail) ? [alertEmail] : [])

module budget 'modules/budget.bicep' = if (budgetAmount > 0) {
  name: 'budget-${resourceToken}'
  scope: resourceGroup(batchAccountResourceGroup)
  params: {
    name: 'budget-batch-terminator-${resourceToken}'
    amount: budgetAmount
    startDate: !empty(budgetStartDate) ? budgetStartDate : deployedAt
    killThreshold: budgetKillThreshold
    warningThreshold: budgetWarningThreshold
    contactEmails: budgetEmails
    killSwitchActionGroupId: alerts.outputs.killSwitchActionGroupId
  }
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  params: {
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
  }
}

// --- the function app (depends on the role assignments through the storage and batchRole outputs) ---------------
module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  dependsOn: [
    additionalBatchRoles
  ]
  params: {
    location: location
    tags: tags
    serviceName: serviceName
    name: appName
    planName: 'plan-${resourceToken}'
    identityId: identity.id
    identityClientId: identity.properties.clientId
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageQueueEndpoint: storage.outputs.queueEndpoint
    storageTableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    scmBasicAuthEnabled: scmBasicAuthEnabled
    batchAccountUrl: 'https://${batchRole.outputs.accountEndpoint}'
    batchApiVersion: batchApiVersion
    batchTimeoutSeconds: batchTimeoutSeconds
    terminateQueueName: terminateQueueName
    poisonQueueName: poisonQueueName
    maxDequeueCount: maxDequeueCount
    batchAccounts: batchAccounts
    terminateAllowedJobIdPrefixes: terminateAllowedJobIdPrefixes
    terminateHonorKeep: terminateHonorKeep
    terminateDryRun: terminateDryRun
    confirmQueueName: confirmQueueName
    confirmAfterSeconds: confirmAfterSeconds
    confirmMaxChecks: confirmMaxChecks
    confirmForce: confirmForce
    incidentQueueName: storage.outputs.incidentQueueName
    incidentTableName: storage.outputs.incidentTableName
    killSwitchApproval: killSwitchApproval
    killSwitchDisableSchedules: killSwitchDisableSchedules
    killSwitchScalePools: killSwitchScalePools
    pythonThreadpoolThreadCount: pythonThreadpoolThreadCount
    alertJobIdDimension: alertJobIdDimension
    alertRulesAllowed: alertRulesAllowed
    alertSelectJobIdPrefix: alertSelectJobIdPrefix
    alertSelectPoolId: alertSelectPoolId
    alertSelectMetadata: alertSelectMetadata
    alertMaxJobs: alertMaxJobs
    sweepSchedule: sweepSchedule
    sweepMaxAgeHours: sweepMaxAgeHours
    sweepIdleMinutes: sweepIdleMinutes
    sweepJobIdPrefix: sweepJobIdPrefix
    sweepDryRun: sweepDryRun
    sweepMaxJobs: sweepMaxJobs
    sweepAccounts: sweepAccounts
    sweepConcurrency: sweepConcurrency
    sweepRunBudgetSeconds: sweepRunBudgetSeconds
  }
}

// --- outputs (azd stores these in .azure/<env>/.env) --------------------------------------------------------------
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_HOSTNAME string = functionApp.outputs.defaultHostName
output AZURE_MANAGED_IDENTITY_NAME string = identity.name
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.properties.clientId
output AZURE_MANAGED_IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_QUEUE_ENDPOINT string = storage.outputs.queueEndpoint
output TERMINATE_QUEUE_NAME string = storage.outputs.terminateQueueName
output POISON_QUEUE_NAME string = storage.outputs.poisonQueueName
output CONFIRM_QUEUE_NAME string = storage.outputs.confirmQueueName
output INCIDENT_QUEUE_NAME string = storage.outputs.incidentQueueName
output INCIDENT_TABLE_NAME string = storage.outputs.incidentTableName
output AZURE_STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output KILL_SWITCH_ACTION_GROUP_ID string = alerts.outputs.killSwitchActionGroupId
output BATCH_ACCOUNT_URL string = 'https://${batchRole.outputs.accountEndpoint}'
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output AZURE_LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.logAnalyticsWorkspaceId
output AZURE_WORKBOOK_ID string = workbook.outputs.workbookId
